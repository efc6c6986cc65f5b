/* Headers bindgen reads, plus capo's shim for DPDK's static inline functions and
 * macros. Every shim function is a one-line wrapper named `capo_<what it wraps>`. */
#ifndef CAPO_DPDK_H
#define CAPO_DPDK_H

#include <stdint.h>

#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_flow.h>
#include <rte_acl.h>
#include <rte_bus_vdev.h>

/* `rte_errno` (a per-lcore variable behind a macro). */
int capo_rte_errno(void);

/* `rte_eth_rx_burst` (static inline). */
uint16_t capo_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **rx_pkts, uint16_t nb_pkts);

/* `rte_eth_tx_burst` (static inline). */
uint16_t capo_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

/* `rte_pktmbuf_alloc` (static inline). */
struct rte_mbuf *capo_rte_pktmbuf_alloc(struct rte_mempool *mp);

/* `rte_pktmbuf_free` (static inline). */
void capo_rte_pktmbuf_free(struct rte_mbuf *m);

/* `rte_pktmbuf_append` (static inline): grows the data by `len`, returns its start. */
char *capo_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);

/* `rte_pktmbuf_mtod` (macro) and `rte_pktmbuf_data_len` (macro). */
const uint8_t *capo_rte_pktmbuf_data(const struct rte_mbuf *m, uint16_t *len);

/* Rx flow metadata: returns 1 when `RTE_MBUF_F_RX_FDIR_ID` is set and stores the MARK
 * id (`hash.fdir.hi`) in `*mark`; 0 otherwise. `*flag` is set when `RTE_MBUF_F_RX_FDIR`
 * (MARK or FLAG) is set. */
int capo_rte_mbuf_flow_mark(const struct rte_mbuf *m, uint32_t *mark, int *flag);

#endif
