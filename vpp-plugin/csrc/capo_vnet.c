/* What capo's VPP plugin needs from vnet that the vpp-plugin crate's bindings cannot
 * reach (pool and hash macros, registration macros). Safe wrappers: src/vnet_ifaces.rs. */
#include <vnet/vnet.h>
#include <vnet/interface_funcs.h>
#include <vnet/feature/feature.h>

/* One past the largest software interface index VPP has allocated. */
u32
capo_vnet_sw_if_limit (void)
{
  return pool_len (vnet_get_main ()->interface_main.sw_interfaces);
}

/* Writes the name of interface `sw_if_index` (at most `cap` bytes, no NUL) to `buf`;
 * returns its length, or -1 when VPP has no such interface. */
int
capo_vnet_sw_if_name (u32 sw_if_index, u8 *buf, u32 cap)
{
  vnet_main_t *vnm = vnet_get_main ();
  if (pool_is_free_index (vnm->interface_main.sw_interfaces, sw_if_index))
    return -1;
  u8 *s = format (0, "%U", format_vnet_sw_if_index_name, vnm, sw_if_index);
  u32 n = vec_len (s);
  if (n > cap)
    n = cap;
  clib_memcpy (buf, s, n);
  vec_free (s);
  return (int) n;
}

/* 1 when `node` is enabled on `arc` for the interface. */
int
capo_vnet_feature_enabled (const char *arc, const char *node, u32 sw_if_index)
{
  vnet_main_t *vnm = vnet_get_main ();
  if (pool_is_free_index (vnm->interface_main.sw_interfaces, sw_if_index))
    return 0;
  return vnet_feature_is_enabled (arc, node, sw_if_index);
}

/* Implemented in Rust: told of every software interface VPP adds or deletes. */
extern void capo_on_sw_interface_add_del (u32 sw_if_index, u32 is_add);

static clib_error_t *
capo_sw_interface_add_del (vnet_main_t *vnm, u32 sw_if_index, u32 is_add)
{
  capo_on_sw_interface_add_del (sw_if_index, is_add);
  return 0;
}

VNET_SW_INTERFACE_ADD_DEL_FUNCTION (capo_sw_interface_add_del);
