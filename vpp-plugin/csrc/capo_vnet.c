/* What capo's VPP plugin needs from vnet that the vpp-plugin crate's bindings cannot
 * reach (pool and hash macros, registration macros). Safe wrappers: src/vnet_ifaces.rs. */
#include <vnet/vnet.h>
#include <vnet/interface_funcs.h>
#include <vnet/feature/feature.h>
#include <vnet/flow/flow.h>
#include <vnet/ethernet/ethernet.h>
#include <vnet/ip/ip4_packet.h>
#include <vnet/ip/ip6_packet.h>
#include <vnet/udp/udp_packet.h>

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

/* Writes the index of the software interface VPP names `name` (`len` bytes) to
 * `*sw_if_index`; returns 0, or -1 when none is found. The whole name is looked up in
 * the hardware interfaces' name hash, then parsed as VPP's CLI parses interface names
 * (sub-interfaces); no walk of every interface. What either finds counts only if VPP
 * formats that interface's name as exactly `name`. A miss is not proof of absence:
 * the caller lists every interface for a name still unbound. */
int
capo_vnet_sw_if_by_name (const u8 *name, u32 len, u32 *sw_if_index)
{
  vnet_main_t *vnm = vnet_get_main ();
  unformat_input_t in;
  u8 *copy = 0;
  u32 found = ~0;
  int ok;
  if (len == 0)
    return -1;
  vec_add (copy, name, len);
  uword *hw = hash_get_mem (vnm->interface_main.hw_interface_by_name, copy);
  if (hw)
    {
      found = vnet_get_hw_interface (vnm, hw[0])->sw_if_index;
      vec_free (copy);
      ok = 1;
    }
  else
    {
      /* The input owns `copy` from here; unformat_free frees it. */
      unformat_init_vector (&in, copy);
      ok = unformat_user (&in, unformat_vnet_sw_interface, vnm, &found) &&
	   unformat_check_input (&in) == UNFORMAT_END_OF_INPUT;
      unformat_free (&in);
    }
  if (!ok || pool_is_free_index (vnm->interface_main.sw_interfaces, found))
    return -1;
  u8 *s = format (0, "%U", format_vnet_sw_if_index_name, vnm, found);
  ok = vec_len (s) == len && memcmp (s, name, len) == 0;
  vec_free (s);
  if (!ok)
    return -1;
  *sw_if_index = found;
  return 0;
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

/* Writes the hardware interface under `sw_if_index` to `*hw_if_index` and its
 * driver's device class name (at most `cap` bytes, no NUL) to `driver`, its length to
 * `*driver_len`. Returns 0, or -1 when VPP has no such interface. */
int
capo_vnet_hw_of (u32 sw_if_index, u32 *hw_if_index, u8 *driver, u32 cap, u32 *driver_len)
{
  vnet_main_t *vnm = vnet_get_main ();
  *driver_len = 0;
  if (pool_is_free_index (vnm->interface_main.sw_interfaces, sw_if_index))
    return -1;
  vnet_hw_interface_t *hi = vnet_get_sup_hw_interface (vnm, sw_if_index);
  *hw_if_index = hi->hw_if_index;
  vnet_device_class_t *dc = vnet_get_device_class (vnm, hi->dev_class_index);
  if (dc && dc->name)
    {
      u32 n = strlen (dc->name);
      if (n > cap)
	n = cap;
      clib_memcpy (driver, dc->name, n);
      *driver_len = n;
    }
  return 0;
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
  u32 hw_if_index;
  if (capo_vnet_hw_of (sw_if_index, &hw_if_index, driver, cap, driver_len))
    return VNET_FLOW_ERROR_NO_SUCH_INTERFACE;
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
  rv = vnet_flow_enable (vnm, flow_index, hw_if_index);
  if (rv == 0)
    vnet_flow_disable (vnm, flow_index, hw_if_index);
  vnet_flow_del (vnm, flow_index);
  return rv;
}

/* One rule of capo's NIC share (src/share.rs, FlowLayerRule): addresses in network
 * order, ports in host order (as vnet/flow keeps them). */
typedef struct
{
  u32 mark; /* 0: DROP; else MARK with this flow_id */
  u8 is_ip6;
  u8 protocol;
  u8 protocol_mask;
  u8 src[16];
  u8 src_mask[16];
  u8 dst[16];
  u8 dst_mask[16];
  u16 src_port;
  u16 src_port_mask;
  u16 dst_port;
  u16 dst_port_mask;
} capo_flow_rule_t;

/* Copies the rule's `n`-byte addresses and masks, protocol and ports into an
 * n-tuple flow's fields. */
static void
capo_flow_fields (const capo_flow_rule_t *r, u32 n, void *src, void *src_mask,
		  void *dst, void *dst_mask, ip_prot_and_mask_t *protocol,
		  ip_port_and_mask_t *src_port, ip_port_and_mask_t *dst_port)
{
  clib_memcpy (src, r->src, n);
  clib_memcpy (src_mask, r->src_mask, n);
  clib_memcpy (dst, r->dst, n);
  clib_memcpy (dst_mask, r->dst_mask, n);
  protocol->prot = r->protocol;
  protocol->mask = r->protocol_mask;
  src_port->port = r->src_port;
  src_port->mask = r->src_port_mask;
  dst_port->port = r->dst_port;
  dst_port->mask = r->dst_port_mask;
}

/* Adds a DROP or MARK flow of type ipv4-n-tuple or ipv6-n-tuple (not yet enabled
 * anywhere); returns 0 and its index, or VPP's flow error. */
int
capo_vnet_flow_add (const capo_flow_rule_t *r, u32 *flow_index)
{
  vnet_flow_t flow = {
    .actions = r->mark ? VNET_FLOW_ACTION_MARK : VNET_FLOW_ACTION_DROP,
    .mark_flow_id = r->mark,
  };
  if (r->is_ip6)
    {
      vnet_flow_ip6_n_tuple_t *t = &flow.ip6_n_tuple;
      flow.type = VNET_FLOW_TYPE_IP6_N_TUPLE;
      capo_flow_fields (r, 16, &t->src_addr.addr, &t->src_addr.mask,
			&t->dst_addr.addr, &t->dst_addr.mask, &t->protocol,
			&t->src_port, &t->dst_port);
    }
  else
    {
      vnet_flow_ip4_n_tuple_t *t = &flow.ip4_n_tuple;
      flow.type = VNET_FLOW_TYPE_IP4_N_TUPLE;
      capo_flow_fields (r, 4, &t->src_addr.addr, &t->src_addr.mask,
			&t->dst_addr.addr, &t->dst_addr.mask, &t->protocol,
			&t->src_port, &t->dst_port);
    }
  return vnet_flow_add (vnet_get_main (), &flow, flow_index);
}

int
capo_vnet_flow_enable (u32 flow_index, u32 hw_if_index)
{
  return vnet_flow_enable (vnet_get_main (), flow_index, hw_if_index);
}

void
capo_vnet_flow_disable (u32 flow_index, u32 hw_if_index)
{
  vnet_flow_disable (vnet_get_main (), flow_index, hw_if_index);
}

void
capo_vnet_flow_del (u32 flow_index)
{
  vnet_flow_del (vnet_get_main (), flow_index);
}

/* ---- An emulated flow-capable NIC (`capo test flow-emulation`) ----------------------
 *
 * A test double for rigs without a NIC VPP can program (af_packet, tap): the driver's
 * device class gets flow operations that accept ipv4/ipv6-n-tuple flows with DROP or
 * MARK on the emulated interfaces only, and a device-input feature applies them to
 * each received frame as a NIC would before VPP sees it: DROP drops, MARK sets the
 * buffer's flow_id (what dpdk's input does with a flow's mark). Flows are matched in
 * the order they were enabled; the first match decides. Every other interface of
 * that driver still answers "not supported". */

typedef struct
{
  u32 sw_if_index;
  u32 dev_instance;
  u32 *flows;
  u64 dropped;
  u64 marked;
} capo_emu_if_t;

static capo_emu_if_t *capo_emu_ifs;
static u32 capo_emu_class = ~0;

static capo_emu_if_t *
capo_emu_by_instance (u32 dev_instance)
{
  capo_emu_if_t *e;
  vec_foreach (e, capo_emu_ifs)
    if (e->dev_instance == dev_instance)
      return e;
  return 0;
}

static capo_emu_if_t *
capo_emu_by_sw (u32 sw_if_index)
{
  capo_emu_if_t *e;
  vec_foreach (e, capo_emu_ifs)
    if (e->sw_if_index == sw_if_index)
      return e;
  return 0;
}

static int
capo_emu_flow_ops (vnet_main_t *vnm, vnet_flow_dev_op_t op, u32 dev_instance,
		   u32 flow_index, uword *private_data)
{
  capo_emu_if_t *e = capo_emu_by_instance (dev_instance);
  vnet_flow_t *f = vnet_get_flow (flow_index);
  if (!e)
    return VNET_FLOW_ERROR_NOT_SUPPORTED;
  if (!f)
    return VNET_FLOW_ERROR_NO_SUCH_ENTRY;
  switch (op)
    {
    case VNET_FLOW_DEV_OP_ADD_FLOW:
      if (f->type != VNET_FLOW_TYPE_IP4_N_TUPLE &&
	  f->type != VNET_FLOW_TYPE_IP6_N_TUPLE)
	return VNET_FLOW_ERROR_NOT_SUPPORTED;
      if (f->actions & ~(VNET_FLOW_ACTION_DROP | VNET_FLOW_ACTION_MARK))
	return VNET_FLOW_ERROR_NOT_SUPPORTED;
      vec_add1 (e->flows, flow_index);
      return 0;
    case VNET_FLOW_DEV_OP_DEL_FLOW:
      for (u32 i = 0; i < vec_len (e->flows); i++)
	if (e->flows[i] == flow_index)
	  {
	    vec_delete (e->flows, 1, i);
	    return 0;
	  }
      return VNET_FLOW_ERROR_NO_SUCH_ENTRY;
    default:
      return VNET_FLOW_ERROR_NOT_SUPPORTED;
    }
}

static_always_inline int
capo_emu_port (ip_port_and_mask_t *p, u16 value)
{
  return (value & p->mask) == (p->port & p->mask);
}

/* Whether flow `f` matches the frame at `eth` (`len` bytes). */
static int
capo_emu_matches (vnet_flow_t *f, u8 *eth, u32 len)
{
  u16 type;
  u8 proto;
  u8 *l4;
  ip_port_and_mask_t *sp, *dp;
  ip_prot_and_mask_t *pm;
  if (len < sizeof (ethernet_header_t))
    return 0;
  type = clib_net_to_host_u16 (((ethernet_header_t *) eth)->type);
  eth += sizeof (ethernet_header_t);
  len -= sizeof (ethernet_header_t);
  if (f->type == VNET_FLOW_TYPE_IP4_N_TUPLE)
    {
      vnet_flow_ip4_n_tuple_t *t = &f->ip4_n_tuple;
      ip4_header_t *ip = (ip4_header_t *) eth;
      if (type != ETHERNET_TYPE_IP4 || len < sizeof (ip4_header_t))
	return 0;
      if ((ip->src_address.as_u32 & t->src_addr.mask.as_u32) !=
	    (t->src_addr.addr.as_u32 & t->src_addr.mask.as_u32) ||
	  (ip->dst_address.as_u32 & t->dst_addr.mask.as_u32) !=
	    (t->dst_addr.addr.as_u32 & t->dst_addr.mask.as_u32))
	return 0;
      proto = ip->protocol;
      l4 = eth + ip4_header_bytes (ip);
      if (ip4_get_fragment_offset (ip) != 0 || ip4_get_fragment_more (ip) != 0)
	l4 = 0;
      else if (ip4_header_bytes (ip) + sizeof (udp_header_t) > len)
	l4 = 0;
      sp = &t->src_port;
      dp = &t->dst_port;
      pm = &t->protocol;
    }
  else
    {
      vnet_flow_ip6_n_tuple_t *t = &f->ip6_n_tuple;
      ip6_header_t *ip = (ip6_header_t *) eth;
      if (type != ETHERNET_TYPE_IP6 || len < sizeof (ip6_header_t))
	return 0;
      for (int i = 0; i < 2; i++)
	if (((ip->src_address.as_u64[i] & t->src_addr.mask.as_u64[i]) !=
	     (t->src_addr.addr.as_u64[i] & t->src_addr.mask.as_u64[i])) ||
	    ((ip->dst_address.as_u64[i] & t->dst_addr.mask.as_u64[i]) !=
	     (t->dst_addr.addr.as_u64[i] & t->dst_addr.mask.as_u64[i])))
	  return 0;
      proto = ip->protocol;
      l4 = eth + sizeof (ip6_header_t);
      if (sizeof (ip6_header_t) + sizeof (udp_header_t) > len)
	l4 = 0;
      sp = &t->src_port;
      dp = &t->dst_port;
      pm = &t->protocol;
    }
  if ((proto & pm->mask) != (pm->prot & pm->mask))
    return 0;
  if (sp->mask == 0 && dp->mask == 0)
    return 1;
  if (!l4 || (proto != IP_PROTOCOL_TCP && proto != IP_PROTOCOL_UDP))
    return 0;
  udp_header_t *u = (udp_header_t *) l4;
  return capo_emu_port (sp, clib_net_to_host_u16 (u->src_port)) &&
	 capo_emu_port (dp, clib_net_to_host_u16 (u->dst_port));
}

static uword
capo_flow_emulator_fn (vlib_main_t *vm, vlib_node_runtime_t *node,
		       vlib_frame_t *frame)
{
  u32 n = frame->n_vectors;
  u32 *from = vlib_frame_vector_args (frame);
  vlib_buffer_t *bufs[VLIB_FRAME_SIZE];
  u16 nexts[VLIB_FRAME_SIZE];
  vlib_get_buffers (vm, from, bufs, n);
  for (u32 i = 0; i < n; i++)
    {
      vlib_buffer_t *b = bufs[i];
      u32 next;
      vnet_feature_next (&next, b);
      capo_emu_if_t *e = capo_emu_by_sw (vnet_buffer (b)->sw_if_index[VLIB_RX]);
      u32 *fi;
      if (e)
	vec_foreach (fi, e->flows)
	  {
	    vnet_flow_t *f = vnet_get_flow (*fi);
	    if (!f || !capo_emu_matches (f, vlib_buffer_get_current (b),
					 b->current_length))
	      continue;
	    if (f->actions & VNET_FLOW_ACTION_DROP)
	      {
		next = 0;
		b->error = node->errors[0];
		__atomic_fetch_add (&e->dropped, 1, __ATOMIC_RELAXED);
	      }
	    else
	      {
		b->flow_id = f->mark_flow_id;
		__atomic_fetch_add (&e->marked, 1, __ATOMIC_RELAXED);
	      }
	    break;
	  }
      nexts[i] = next;
    }
  vlib_buffer_enqueue_to_next (vm, node, from, nexts, n);
  return n;
}

static char *capo_flow_emulator_errors[] = { "dropped by the emulated NIC" };

VLIB_REGISTER_NODE (capo_flow_emulator_node) = {
  .function = capo_flow_emulator_fn,
  .name = "capo-flow-emulator",
  .vector_size = sizeof (u32),
  .type = VLIB_NODE_TYPE_INTERNAL,
  .n_errors = 1,
  .error_strings = capo_flow_emulator_errors,
  .n_next_nodes = 1,
  .next_nodes = { [0] = "error-drop" },
};

VNET_FEATURE_INIT (capo_flow_emulator_feature, static) = {
  .arc_name = "device-input",
  .node_name = "capo-flow-emulator",
  .runs_before = VNET_FEATURES ("ethernet-input"),
};

/* Turns the emulation on or off for `sw_if_index` (main thread, barrier held).
 * Returns 0, -1 (no such interface), -2 (its driver has flow support of its own),
 * -3 (another driver is emulated already), -4 (flows are still enabled on it). */
int
capo_vnet_flow_emulation (u32 sw_if_index, int on)
{
  vnet_main_t *vnm = vnet_get_main ();
  if (pool_is_free_index (vnm->interface_main.sw_interfaces, sw_if_index))
    return -1;
  vnet_hw_interface_t *hi = vnet_get_sup_hw_interface (vnm, sw_if_index);
  vnet_device_class_t *dc = vnet_get_device_class (vnm, hi->dev_class_index);
  capo_emu_if_t *e = capo_emu_by_sw (sw_if_index);
  if (on)
    {
      if (e)
	return 0;
      if (dc->flow_ops_function && dc->flow_ops_function != capo_emu_flow_ops)
	return -2;
      if (capo_emu_class != ~0 && capo_emu_class != hi->dev_class_index)
	return -3;
      dc->flow_ops_function = capo_emu_flow_ops;
      capo_emu_class = hi->dev_class_index;
      vec_add2 (capo_emu_ifs, e, 1);
      e->sw_if_index = sw_if_index;
      e->dev_instance = hi->dev_instance;
      vnet_feature_enable_disable ("device-input", "capo-flow-emulator",
				   sw_if_index, 1, 0, 0);
      return 0;
    }
  if (!e)
    return 0;
  if (vec_len (e->flows))
    return -4;
  vnet_feature_enable_disable ("device-input", "capo-flow-emulator", sw_if_index,
			       0, 0, 0);
  vec_free (e->flows);
  vec_del1 (capo_emu_ifs, e - capo_emu_ifs);
  if (vec_len (capo_emu_ifs) == 0)
    {
      dc->flow_ops_function = 0;
      capo_emu_class = ~0;
    }
  return 0;
}

/* The emulation's counts on `sw_if_index`: 1 when it is emulated, else 0. */
int
capo_vnet_flow_emulation_stats (u32 sw_if_index, u32 *flows, u64 *dropped,
				u64 *marked)
{
  capo_emu_if_t *e = capo_emu_by_sw (sw_if_index);
  if (!e)
    return 0;
  *flows = vec_len (e->flows);
  *dropped = __atomic_load_n (&e->dropped, __ATOMIC_RELAXED);
  *marked = __atomic_load_n (&e->marked, __ATOMIC_RELAXED);
  return 1;
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
