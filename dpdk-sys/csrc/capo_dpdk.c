/* capo's shim over DPDK's static inline functions and macros (see capo_dpdk.h). */
#include "capo_dpdk.h"

int capo_rte_errno(void)
{
	return rte_errno;
}

uint16_t capo_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t capo_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *capo_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

void capo_rte_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

char *capo_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

const uint8_t *capo_rte_pktmbuf_data(const struct rte_mbuf *m, uint16_t *len)
{
	*len = rte_pktmbuf_data_len(m);
	return rte_pktmbuf_mtod(m, const uint8_t *);
}

int capo_rte_mbuf_flow_mark(const struct rte_mbuf *m, uint32_t *mark, int *flag)
{
	*flag = (m->ol_flags & RTE_MBUF_F_RX_FDIR) != 0;
	if (m->ol_flags & RTE_MBUF_F_RX_FDIR_ID) {
		*mark = m->hash.fdir.hi;
		return 1;
	}
	return 0;
}
