//! Ports: configure, negotiate Rx metadata, set up the rte_flow template API when the
//! PMD has it, start; Rx/Tx bursts of owned mbufs.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use super::eal::Eal;

/// A failed ethdev call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{function} failed: errno {errno} ({message})")]
pub struct EthError {
    /// The C function.
    pub function: &'static str,
    /// errno (positive).
    pub errno: i32,
    /// `rte_strerror`.
    pub message: String,
}

fn eth_err(function: &'static str, rc: i32) -> EthError {
    let errno = if rc < 0 { -rc } else { super::errno() };
    EthError {
        function,
        errno,
        message: super::strerror(errno),
    }
}

/// How to bring a port up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConfig {
    /// Rx queues.
    pub rx_queues: u16,
    /// Tx queues.
    pub tx_queues: u16,
    /// Descriptors per queue.
    pub ring_size: u16,
    /// Mbufs in the port's pool.
    pub mbufs: u32,
    /// Flow queues for the template/async API (0: do not set it up).
    pub flow_queues: u32,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            ring_size: 256,
            mbufs: 1023,
            flow_queues: 1,
        }
    }
}

/// How the Rx metadata negotiation went (offload.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkDelivery {
    /// The PMD agreed to deliver MARK ids.
    Negotiated,
    /// `-ENOTSUP`: "does not necessarily mean" unsupported; capo tries anyway.
    Unknown,
    /// The PMD refused.
    Refused,
}

/// A started port. Stops, closes and frees its pool on drop.
#[derive(Debug)]
pub struct Port {
    id: u16,
    driver: String,
    pool: NonNull<dpdk_sys::rte_mempool>,
    rx_queues: u16,
    mark: MarkDelivery,
    flow_template_ready: bool,
}

impl Port {
    /// Opens the port named `name` (a vdev name like `net_null0`, or a PCI address),
    /// configures and starts it.
    ///
    /// # Errors
    ///
    /// [`EthError`] naming the failed call.
    pub fn open(_eal: &Eal, name: &str, cfg: &PortConfig) -> Result<Port, EthError> {
        let cname = CString::new(name).map_err(|_| EthError {
            function: "rte_eth_dev_get_port_by_name",
            errno: 22,
            message: "name holds a NUL byte".into(),
        })?;
        let mut id: u16 = 0;
        // SAFETY: `cname` is a valid C string and `id` a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if rc != 0 {
            return Err(eth_err("rte_eth_dev_get_port_by_name", rc));
        }
        // SAFETY: an all-zero rte_eth_dev_info is a valid out-buffer.
        let mut info: dpdk_sys::rte_eth_dev_info = unsafe { std::mem::zeroed() };
        // SAFETY: `id` names a port, `info` is a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(id, &mut info) };
        if rc != 0 {
            return Err(eth_err("rte_eth_dev_info_get", rc));
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: the PMD's driver name is a static NUL-terminated string.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        // Must precede the first rte_eth_dev_configure.
        let mut features = dpdk_sys::consts::RTE_ETH_RX_METADATA_USER_MARK
            | dpdk_sys::consts::RTE_ETH_RX_METADATA_USER_FLAG;
        // SAFETY: `features` is a valid in/out pointer; the port is not configured yet.
        let rc = unsafe { dpdk_sys::rte_eth_rx_metadata_negotiate(id, &mut features) };
        let mark = match rc {
            0 if features & dpdk_sys::consts::RTE_ETH_RX_METADATA_USER_MARK != 0 => {
                MarkDelivery::Negotiated
            }
            0 => MarkDelivery::Refused,
            _ => MarkDelivery::Unknown,
        };
        // SAFETY: an all-zero rte_eth_conf is DPDK's default configuration.
        let conf: dpdk_sys::rte_eth_conf = unsafe { std::mem::zeroed() };
        // SAFETY: valid port, queue counts and configuration pointer.
        let rc =
            unsafe { dpdk_sys::rte_eth_dev_configure(id, cfg.rx_queues, cfg.tx_queues, &conf) };
        if rc != 0 {
            return Err(eth_err("rte_eth_dev_configure", rc));
        }
        let flow_template_ready = cfg.flow_queues > 0 && configure_flow_queues(id, cfg.flow_queues);
        let pool_name = CString::new(format!("capo_pool_{id}")).unwrap_or_default();
        // SAFETY: rte_socket_id has no preconditions.
        let socket = unsafe { dpdk_sys::rte_socket_id() } as i32;
        // SAFETY: valid name; sizes within DPDK's limits; returns NULL on failure.
        let pool = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(
                pool_name.as_ptr(),
                cfg.mbufs,
                0,
                0,
                dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                socket,
            )
        };
        let Some(pool) = NonNull::new(pool) else {
            return Err(eth_err("rte_pktmbuf_pool_create", 0));
        };
        let mut port = Port {
            id,
            driver,
            pool,
            rx_queues: cfg.rx_queues,
            mark,
            flow_template_ready,
        };
        for q in 0..cfg.rx_queues {
            // SAFETY: configured port, queue index below the configured count, default
            // queue configuration (NULL), a live pool.
            let rc = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    id,
                    q,
                    cfg.ring_size,
                    socket as u32,
                    std::ptr::null(),
                    port.pool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(eth_err("rte_eth_rx_queue_setup", rc));
            }
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: as above, for Tx.
            let rc = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(
                    id,
                    q,
                    cfg.ring_size,
                    socket as u32,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(eth_err("rte_eth_tx_queue_setup", rc));
            }
        }
        // SAFETY: the port is configured with its queues set up.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(eth_err("rte_eth_dev_start", rc));
        }
        port.rx_queues = cfg.rx_queues;
        Ok(port)
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The PMD's name (`net_null`, `mlx5_pci`, `net_ice`, …).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Rx queues.
    pub fn rx_queues(&self) -> u16 {
        self.rx_queues
    }

    /// What the Rx metadata negotiation said.
    pub fn mark_delivery(&self) -> MarkDelivery {
        self.mark
    }

    /// Whether `rte_flow_configure` succeeded (the only condition under which the async
    /// flow API may ever be called on this port).
    pub fn flow_template_ready(&self) -> bool {
        self.flow_template_ready
    }

    /// `rte_eth_rx_burst` into `out` (at most `max` mbufs).
    pub fn rx_burst(&self, queue: u16, max: u16) -> Vec<Mbuf<'_>> {
        let mut raw: Vec<*mut dpdk_sys::rte_mbuf> = vec![std::ptr::null_mut(); usize::from(max)];
        // SAFETY: the port is started, `queue` was set up, `raw` has room for `max`.
        let n = unsafe { dpdk_sys::capo_rte_eth_rx_burst(self.id, queue, raw.as_mut_ptr(), max) };
        raw.truncate(usize::from(n));
        raw.into_iter()
            .filter_map(|p| NonNull::new(p).map(Mbuf::owned))
            .collect()
    }

    /// Builds an mbuf holding `data` from the port's pool.
    pub fn alloc(&self, data: &[u8]) -> Option<Mbuf<'_>> {
        let len = u16::try_from(data.len()).ok()?;
        // SAFETY: the pool is live.
        let m = NonNull::new(unsafe { dpdk_sys::capo_rte_pktmbuf_alloc(self.pool.as_ptr()) })?;
        let m = Mbuf::owned(m);
        // SAFETY: `m` is a fresh mbuf; append returns room for `len` bytes or NULL.
        let dst = unsafe { dpdk_sys::capo_rte_pktmbuf_append(m.0.as_ptr(), len) };
        if dst.is_null() {
            return None;
        }
        // SAFETY: `dst` points at `len` writable bytes inside the mbuf.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.cast::<u8>(), data.len()) };
        Some(m)
    }

    /// `rte_eth_tx_burst`; returns the mbufs the PMD did not take.
    pub fn tx_burst<'p>(&'p self, queue: u16, pkts: Vec<Mbuf<'p>>) -> Vec<Mbuf<'p>> {
        let mut raw: Vec<*mut dpdk_sys::rte_mbuf> = pkts.iter().map(|m| m.0.as_ptr()).collect();
        let n = u16::try_from(raw.len()).unwrap_or(u16::MAX);
        std::mem::forget(pkts);
        // SAFETY: the port is started, `queue` was set up, `raw` holds `n` owned mbufs;
        // the PMD takes ownership of the first `sent`.
        let sent = unsafe { dpdk_sys::capo_rte_eth_tx_burst(self.id, queue, raw.as_mut_ptr(), n) };
        raw.drain(..usize::from(sent));
        raw.into_iter()
            .filter_map(|p| NonNull::new(p).map(Mbuf::owned))
            .collect()
    }
}

fn configure_flow_queues(id: u16, queues: u32) -> bool {
    // SAFETY: zeroed info/error structs are valid out-buffers.
    let (mut pinfo, mut qinfo, mut err): (
        dpdk_sys::rte_flow_port_info,
        dpdk_sys::rte_flow_queue_info,
        dpdk_sys::rte_flow_error,
    ) = unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: valid out-pointers; the port is configured and not started.
    let rc = unsafe { dpdk_sys::rte_flow_info_get(id, &mut pinfo, &mut qinfo, &mut err) };
    if rc != 0 {
        return false;
    }
    let n = queues.min(pinfo.max_nb_queues.max(1));
    let qattr = dpdk_sys::rte_flow_queue_attr {
        size: qinfo.max_size.clamp(1, 64),
    };
    let qptrs: Vec<*const dpdk_sys::rte_flow_queue_attr> =
        (0..n).map(|_| &qattr as *const _).collect();
    let pattr = dpdk_sys::rte_flow_port_attr {
        nb_counters: pinfo.max_nb_counters.min(1 << 16),
        ..Default::default()
    };
    // SAFETY: `qptrs` holds `n` pointers to a live queue attribute; the port is
    // configured and not started, as rte_flow_configure requires.
    let rc = unsafe {
        dpdk_sys::rte_flow_configure(id, &pattr, n as u16, qptrs.as_ptr().cast_mut(), &mut err)
    };
    rc == 0
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port was started by `open`; stop and close are valid on it, and
        // the pool is freed only once no queue refers to it.
        unsafe {
            dpdk_sys::rte_eth_dev_stop(self.id);
            dpdk_sys::rte_eth_dev_close(self.id);
            dpdk_sys::rte_mempool_free(self.pool.as_ptr());
        }
    }
}

/// An owned mbuf, freed on drop. It borrows the [`Port`] whose mempool holds it, so
/// it cannot outlive the pool `Port::drop` frees:
///
/// ```compile_fail
/// fn use_after_close(port: capo_offload::dpdk::ethdev::Port) {
///     let m = port.alloc(b"frame");
///     drop(port); // error: `port` is still borrowed by `m`
///     drop(m);
/// }
/// ```
#[derive(Debug)]
pub struct Mbuf<'port>(
    NonNull<dpdk_sys::rte_mbuf>,
    std::marker::PhantomData<&'port Port>,
);

impl Mbuf<'_> {
    fn owned(m: NonNull<dpdk_sys::rte_mbuf>) -> Self {
        Mbuf(m, std::marker::PhantomData)
    }

    /// The packet data of the first segment.
    pub fn data(&self) -> &[u8] {
        let mut len: u16 = 0;
        // SAFETY: `self.0` is a live mbuf we own; `len` is a valid out-pointer.
        let p = unsafe { dpdk_sys::capo_rte_pktmbuf_data(self.0.as_ptr(), &mut len) };
        if p.is_null() {
            return &[];
        }
        // SAFETY: the first segment holds `len` bytes at `p`, alive while `self` is.
        unsafe { std::slice::from_raw_parts(p, usize::from(len)) }
    }

    /// The rte_flow MARK id the NIC set, if any (`RTE_MBUF_F_RX_FDIR_ID`).
    pub fn flow_mark(&self) -> Option<u32> {
        let (mut mark, mut flag) = (0u32, 0i32);
        // SAFETY: `self.0` is a live mbuf; valid out-pointers.
        let has =
            unsafe { dpdk_sys::capo_rte_mbuf_flow_mark(self.0.as_ptr(), &mut mark, &mut flag) };
        (has != 0).then_some(mark)
    }
}

impl Drop for Mbuf<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and free it once.
        unsafe { dpdk_sys::capo_rte_pktmbuf_free(self.0.as_ptr()) };
    }
}
