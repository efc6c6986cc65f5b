/* What capo's VPP plugin needs from vnet that the vpp-plugin crate's bindings cannot
 * reach (pool and hash macros, registration macros). Safe wrappers: src/vnet_ifaces.rs. */
#include <vnet/vnet.h>
#include <vnet/interface_funcs.h>
#include <vnet/feature/feature.h>
#include <vnet/flow/flow.h>

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

/* Tries VPP's flow layer on the hardware interface under `sw_if_index`: a flow
 * marking UDP from 192.0.2.1 (TEST-NET-1, never a real peer) with `mark` is added,
 * enabled on the interface, then disabled and deleted again. Returns 0 when the
 * interface's driver took it, else VPP's flow error (VNET_FLOW_ERROR_*). Writes the
 * driver's device class name (at most `cap` bytes, no NUL) to `driver` and its
 * length to `*driver_len`. */
int
capo_vnet_flow_probe (u32 sw_if_index, u32 mark, u8 *driver, u32 cap, u32 *driver_len)
{
  vnet_main_t *vnm = vnet_get_main ();
  *driver_len = 0;
  if (pool_is_free_index (vnm->interface_main.sw_interfaces, sw_if_index))
    return VNET_FLOW_ERROR_NO_SUCH_INTERFACE;
  vnet_hw_interface_t *hi = vnet_get_sup_hw_interface (vnm, sw_if_index);
  vnet_device_class_t *dc = vnet_get_device_class (vnm, hi->dev_class_index);
  if (dc && dc->name)
    {
      u32 n = strlen (dc->name);
      if (n > cap)
	n = cap;
      clib_memcpy (driver, dc->name, n);
      *driver_len = n;
    }
  vnet_flow_t flow = {
    .type = VNET_FLOW_TYPE_IP4_N_TUPLE,
    .actions = VNET_FLOW_ACTION_MARK,
    .mark_flow_id = mark,
  };
  flow.ip4_n_tuple.src_addr.addr.as_u32 = clib_host_to_net_u32 (0xc0000201);
  flow.ip4_n_tuple.src_addr.mask.as_u32 = ~0;
  flow.ip4_n_tuple.protocol.prot = IP_PROTOCOL_UDP;
  flow.ip4_n_tuple.protocol.mask = 0xff;
  u32 flow_index;
  int rv = vnet_flow_add (vnm, &flow, &flow_index);
  if (rv)
    return rv;
  rv = vnet_flow_enable (vnm, flow_index, hi->hw_if_index);
  if (rv == 0)
    vnet_flow_disable (vnm, flow_index, hi->hw_if_index);
  vnet_flow_del (vnm, flow_index);
  return rv;
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
