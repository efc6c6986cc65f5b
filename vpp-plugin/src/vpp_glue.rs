//! Registration with VPP: the plugin, the `capo { … }` startup.conf section, the CLI,
//! and the `capo-control` process node that runs the control thread's requests on VPP's
//! main thread under the worker barrier. Only wiring: every decision is in the safe
//! modules.
//!
//! Start-up order (VPP): init functions, then config functions (our section is parsed
//! into [`CONFIG`]), then the main loop starts process nodes: `capo-control` builds the
//! [`Plugin`], binds the control socket and starts the control thread.
#![allow(unsafe_code)]

use std::ffi::{c_int, CString};

use capo_policy::Verdict;
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use vpp_plugin::bindings::{
    clib_error_t, unformat_input_t, vlib_cli_output, vlib_config_function_runtime_t,
    vlib_get_plugin_symbol, vlib_helper_get_global_main, vlib_helper_unformat_get_input,
    vlib_main_t,
};
use vpp_plugin::vlib::process_node::{channel, Receiver, Sender};
use vpp_plugin::vlib::{self, BarrierHeldMainRef, MainRef, ProcessNode};
use vpp_plugin::vppinfra::error::ErrorStack;
use vpp_plugin::{
    vlib_cli_command, vlib_plugin_register, vlib_process_node, ErrorCounters, NextNodes,
};

use crate::binding::VppInterface;
use crate::cli::{self, Show};
use crate::config::PluginConfig;
use crate::control::{
    self, Commit, ContextError, RebindSignal, ShareOutcome, ShareTargets, VppContext,
};
use crate::generation::{Generation, SwIfIndex, VppDir};
use crate::peer;
use crate::share::{FlowLayerRule, ShareState};
use crate::Plugin;

vlib_plugin_register! {
    version: "0.1.0",
    description: "capo: Calico network policy (Rust)",
    version_required: vpp_plugin::VPP_BUILD_VER,
}

/// The plugin, once the main loop has started.
static PLUGIN: OnceLock<Plugin> = OnceLock::new();

/// The parsed startup.conf section (default when absent).
static CONFIG: Mutex<Option<PluginConfig>> = Mutex::new(None);

/// The plugin, if started.
pub(crate) fn plugin() -> Option<&'static Plugin> {
    PLUGIN.get()
}

// ---- startup.conf -------------------------------------------------------------------

const UNFORMAT_END_OF_INPUT: u64 = !0;

/// `VLIB_CONFIG_FUNCTION (capo_config, "capo")`.
static mut CAPO_CONFIG_REGISTRATION: vlib_config_function_runtime_t =
    vlib_config_function_runtime_t {
        function: Some(capo_config),
        // SAFETY: an all-zero unformat_input_t is VPP's empty input (as in C's static
        // initialisation of VLIB_CONFIG_FUNCTION registrations).
        input: unsafe { std::mem::zeroed() },
        next_registration: std::ptr::null_mut(),
        is_early: 0,
        name: vpp_plugin::macro_support::c_char_array::<32>("capo"),
    };

#[vpp_plugin::macro_support::ctor::ctor(crate_path = ::vpp_plugin::macro_support::ctor)]
unsafe fn capo_config_register() {
    // SAFETY: load-time constructor, before VPP reads the registrations; the static is
    // only touched here and by VPP.
    unsafe {
        let vgm = vlib_helper_get_global_main();
        let r = std::ptr::addr_of_mut!(CAPO_CONFIG_REGISTRATION);
        (*r).next_registration = (*vgm).config_function_registrations;
        (*vgm).config_function_registrations = r;
    }
}

unsafe extern "C" fn capo_config(
    _vm: *mut vlib_main_t,
    input: *mut unformat_input_t,
) -> *mut clib_error_t {
    let mut text = Vec::new();
    loop {
        // SAFETY: VPP passes a valid unformat input for our section.
        let c = unsafe { vlib_helper_unformat_get_input(input) };
        if c == UNFORMAT_END_OF_INPUT {
            break;
        }
        text.push(c as u8);
    }
    match PluginConfig::parse(&String::from_utf8_lossy(&text)) {
        Ok(cfg) => {
            *CONFIG.lock().unwrap_or_else(PoisonError::into_inner) = Some(cfg);
            std::ptr::null_mut()
        }
        Err(e) => ErrorStack::msg(e.to_string()).into_raw(),
    }
}

// ---- CLI ----------------------------------------------------------------------------

fn cli_output(vm: &MainRef, text: &str) {
    let Ok(c) = CString::new(text.replace('\0', " ")) else {
        return;
    };
    // SAFETY: `vm` is the main thread's vlib_main_t (CLI handlers run there); "%s" takes
    // one NUL-terminated string, which `c` is and outlives the call.
    unsafe { vlib_cli_output(vm.as_ptr(), c"%s".as_ptr().cast_mut(), c.as_ptr()) };
}

#[vlib_cli_command(
    path = "show capo",
    short_help = "show capo interfaces|ipsets|policies [verbose]|rules|generations|counters|flows [verbose]"
)]
fn show_capo(vm: &mut BarrierHeldMainRef, input: &str) -> Result<(), ErrorStack> {
    let cmd = Show::parse(input).map_err(|e| ErrorStack::msg(e.to_string()))?;
    let text = match plugin() {
        Some(p) => p.show(cmd, control::unix_now()),
        None => "capo: not started\n".to_string(),
    };
    cli_output(vm, &text);
    Ok(())
}

#[vlib_cli_command(
    path = "show capo offload",
    short_help = "show capo offload (tries VPP's flow layer on each interface with capo's feature)"
)]
fn show_capo_offload(vm: &mut BarrierHeldMainRef, _input: &str) -> Result<(), ErrorStack> {
    let (generation, rules, interfaces) = share_state().summary();
    let rows: Vec<cli::OffloadRow> = crate::vnet_ifaces::list(vm)
        .into_iter()
        .filter_map(|i| {
            let policed = crate::node::feature::ARCS.iter().any(|(arc, node)| {
                crate::vnet_ifaces::feature_enabled(vm, arc, node, i.sw_if_index.0)
            });
            let uplink = interfaces.iter().any(|s| s.sw_if_index == i.sw_if_index.0);
            (policed || uplink).then_some((i, !policed))
        })
        .map(|(i, uplink)| {
            // The canary's mark: a punt of generation tag 3 at index 0, which no
            // generation of capo's ever installs through this interface.
            let (driver, flow_layer) =
                crate::vnet_ifaces::flow_probe(vm, i.sw_if_index.0, 0xe0_0000);
            cli::OffloadRow {
                uplink,
                name: i.name,
                sw_if_index: i.sw_if_index.0,
                driver,
                flow_layer,
                emulated: crate::vnet_ifaces::flow_emulation_stats(vm, i.sw_if_index.0),
            }
        })
        .collect();
    let share = cli::ShareSummary {
        generation,
        rules,
        interfaces,
    };
    cli_output(vm, &cli::render_offload(&rows, &share));
    Ok(())
}

/// The NIC share installed through VPP's flow layer.
static SHARE: LazyLock<Mutex<ShareState>> = LazyLock::new(Mutex::default);

fn share_state() -> std::sync::MutexGuard<'static, ShareState> {
    SHARE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[vlib_cli_command(
    path = "capo test flow-emulation",
    short_help = "capo test flow-emulation INTERFACE [off] (a test double: an emulated NIC takes VPP flows on an interface whose driver has none)"
)]
fn capo_test_flow_emulation(vm: &mut BarrierHeldMainRef, input: &str) -> Result<(), ErrorStack> {
    let mut words = input.split_whitespace();
    let usage = || ErrorStack::msg("usage: capo test flow-emulation INTERFACE [off]");
    let name = words.next().ok_or_else(usage)?;
    let on = match words.next() {
        None => true,
        Some("off") => false,
        Some(_) => return Err(usage()),
    };
    if words.next().is_some() {
        return Err(usage());
    }
    let iface = crate::vnet_ifaces::list(vm)
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| ErrorStack::msg(format!("no interface {name}")))?;
    crate::vnet_ifaces::flow_emulation(vm, iface.sw_if_index.0, on)
        .map_err(|e| ErrorStack::msg(format!("{name}: {e}")))
}

#[vlib_cli_command(path = "clear capo", short_help = "clear capo counters")]
fn clear_capo(_vm: &mut BarrierHeldMainRef, input: &str) -> Result<(), ErrorStack> {
    cli::parse_clear(input).map_err(|e| ErrorStack::msg(e.to_string()))?;
    if let Some(p) = plugin() {
        p.clear_counters();
    }
    Ok(())
}

#[vlib_cli_command(
    path = "capo bench",
    short_help = "capo bench npol TUPLE-FILE [repeat N] [verdicts FILE] (holds the worker barrier while it runs)"
)]
fn capo_bench(vm: &mut BarrierHeldMainRef, input: &str) -> Result<(), ErrorStack> {
    let err = |e: &dyn std::fmt::Display| ErrorStack::msg(e.to_string());
    let args = peer::BenchArgs::parse(input).map_err(|e| err(&e))?;
    let text = std::fs::read_to_string(&args.tuples)
        .map_err(|e| err(&format!("{}: {e}", args.tuples.display())))?;
    let tuples = peer::parse_tuples(&text).map_err(|e| err(&e))?;
    let npol_match = resolve_npol_match().map_err(|e| err(&e))?;
    let clock = || {
        // SAFETY: RDTSC reads the time-stamp counter; it has no memory effects.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_rdtsc()
        }
    };
    let fa: Vec<peer::FaFiveTuple> = tuples
        .iter()
        .map(|t| peer::FaFiveTuple::of(&t.packet))
        .collect();
    let items: Vec<(&peer::Tuple, peer::FaFiveTuple)> = tuples.iter().zip(fa).collect();
    let (npol, npol_verdicts) = peer::time_engine(&items, args.repeat, &clock, |(t, fa)| {
        let mut tuple = *fa;
        let mut action = 0u8;
        // SAFETY: `npol_match` is npol_match_func in the loaded npol plugin (resolved
        // and checked by resolve_npol_match); it reads the tuple and writes one byte
        // through the two pointers, both valid for the call. The caller configured npol
        // on every interface the tuple file names (npol indexes its vector unchecked).
        unsafe {
            npol_match(
                t.sw_if_index.0,
                u32::from(t.dir == VppDir::Rx),
                &mut tuple,
                c_int::from(t.packet.src.is_ipv6()),
                &mut action,
            )
        };
        // NPOL_ACTION_ALLOW is 2 (npol.h: DENY 0, UNKNOWN 1); anything else drops.
        if action == 2 {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    });
    let generation = plugin().and_then(|p| p.cell.load());
    let capo = generation.as_ref().map(|g| {
        let mut scratch = capo_classifier::Scratch::default();
        peer::time_engine(&tuples, args.repeat, &clock, |t| {
            g.interface(t.sw_if_index)
                .and_then(|i| {
                    let dir = i.calico_dir(t.dir);
                    g.classifier()
                        .classify(g.classifier_iface(i)?, dir, &t.packet, &mut scratch)
                        .map(|d| d.verdict)
                })
                .unwrap_or(Verdict::Allow)
        })
    });
    let differ = capo.as_ref().map_or(0, |(_, cv)| {
        cv.iter()
            .zip(&npol_verdicts)
            .filter(|(a, b)| a != b)
            .count() as u64
    });
    if let Some(path) = &args.verdicts {
        let mut out = String::with_capacity(tuples.len() * 12);
        for (i, n) in npol_verdicts.iter().enumerate() {
            let c = capo.as_ref().and_then(|(_, cv)| cv.get(i));
            out.push_str(peer::verdict_word(*n));
            out.push(' ');
            out.push_str(c.map_or("-", |c| peer::verdict_word(*c)));
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|e| err(&format!("{}: {e}", path.display())))?;
    }
    let report = peer::BenchReport {
        tuples: tuples.len(),
        passes: args.repeat,
        npol,
        capo: capo.map(|(run, _)| run),
        differ,
    };
    cli_output(vm, &report.render());
    Ok(())
}

/// `npol_match_func`'s C signature (npol_match.h, v26.06).
type NpolMatchFn = unsafe extern "C" fn(u32, u32, *mut peer::FaFiveTuple, c_int, *mut u8) -> c_int;

/// Finds `npol_match_func` in the loaded npol plugin: the exported registration gives
/// the file and its load base (`dladdr`), the file's symbol table the offset.
fn resolve_npol_match() -> Result<NpolMatchFn, String> {
    // SAFETY: both arguments are NUL-terminated strings; VPP returns null when the
    // plugin is not loaded or lacks the symbol, and only reads them.
    let reg = unsafe {
        vlib_get_plugin_symbol(
            c"npol_plugin.so".as_ptr(),
            c"vlib_plugin_registration".as_ptr(),
        )
    };
    if reg.is_null() {
        return Err(
            "the npol plugin is not loaded (plugins { plugin npol_plugin.so { enable } })".into(),
        );
    }
    // SAFETY: Dl_info is plain data; all-zero is a valid value for dladdr to fill.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and writes `info`.
    if unsafe { libc::dladdr(reg, &mut info) } == 0 || info.dli_fname.is_null() {
        return Err("dladdr does not know npol's registration".into());
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader, alive while
    // the object is loaded (VPP never unloads plugins).
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = std::path::PathBuf::from(path.to_string_lossy().into_owned());
    let reg_off =
        peer::symbol_offset(&path, "vlib_plugin_registration").map_err(|e| e.to_string())?;
    let fn_off = peer::symbol_offset(&path, "npol_match_func").map_err(|e| e.to_string())?;
    let base = info.dli_fbase as usize;
    if (reg as usize).wrapping_sub(reg_off as usize) != base {
        return Err(format!(
            "{} does not match the loaded npol plugin",
            path.display()
        ));
    }
    let addr = base.wrapping_add(fn_off as usize);
    // SAFETY: `addr` is the entry of npol_match_func in the loaded plugin: the same
    // file's symbol table, at the load base the registration confirmed. Its C
    // signature is NpolMatchFn's.
    Ok(unsafe { std::mem::transmute::<usize, NpolMatchFn>(addr) })
}

// ---- main-thread requests -------------------------------------------------------------

/// Work for the main thread, run with the worker barrier held.
type Job = Box<dyn FnOnce(&BarrierHeldMainRef) + Send>;

/// How long the control thread waits for the main thread.
const MAIN_THREAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the active generation is bound again without VPP saying an interface
/// came or went (names can change without an add or delete).
const REBIND_PERIOD: Duration = Duration::from_secs(2);

/// Woken by VPP's interface add/del callback.
static REBIND: LazyLock<RebindSignal> = LazyLock::new(RebindSignal::new);

/// [`VppContext`] over the `capo-control` process node.
struct MainThread {
    jobs: Sender<Job>,
}

impl MainThread {
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BarrierHeldMainRef) -> T + Send + 'static,
    ) -> Result<T, ContextError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |vm| {
                let _ = tx.send(f(vm));
            }))
            .map_err(|_| ContextError::Unavailable("capo-control stopped".into()))?;
        rx.recv_timeout(MAIN_THREAD_TIMEOUT)
            .map_err(|e| ContextError::Unavailable(e.to_string()))
    }
}

impl VppContext for MainThread {
    fn interfaces(&mut self) -> Result<Vec<VppInterface>, ContextError> {
        self.run(|vm| crate::vnet_ifaces::list(vm))
    }

    fn interfaces_among(
        &mut self,
        names: &[String],
        indexes: &[SwIfIndex],
    ) -> Result<Vec<VppInterface>, ContextError> {
        let (names, indexes) = (names.to_vec(), indexes.to_vec());
        self.run(move |vm| crate::vnet_ifaces::among(vm, &names, &indexes))
    }

    fn without_features(&mut self, policed: &[SwIfIndex]) -> Result<Vec<SwIfIndex>, ContextError> {
        let policed = policed.to_vec();
        self.run(move |vm| {
            policed
                .into_iter()
                .filter(|i| {
                    !crate::node::feature::ARCS
                        .iter()
                        .all(|(arc, node)| crate::vnet_ifaces::feature_enabled(vm, arc, node, i.0))
                })
                .collect()
        })
    }

    fn commit(&mut self, c: Commit) -> Result<Option<Arc<Generation>>, ContextError> {
        self.run(move |vm| {
            let mut enabled = Vec::new();
            for idx in &c.enable {
                if let Err(e) = crate::node::feature::set(vm, *idx, true) {
                    for done in enabled {
                        let _ = crate::node::feature::set(vm, done, false);
                    }
                    return Err(e);
                }
                enabled.push(*idx);
            }
            // Flip while workers are stopped: features and generation change together.
            // The generation let go of goes back to the control thread to be freed
            // there (here only if the control thread stopped waiting for this job).
            let released = c.cell.publish(c.next);
            for idx in &c.disable {
                // An interface that went away in VPP cannot be disabled; not an error.
                let _ = crate::node::feature::set(vm, *idx, false);
            }
            Ok(released)
        })?
    }

    fn install_share(
        &mut self,
        generation: u64,
        rules: Vec<FlowLayerRule>,
        targets: ShareTargets,
    ) -> Result<ShareOutcome, ContextError> {
        self.run(move |vm| {
            let known = crate::vnet_ifaces::list(vm);
            let mut on = targets.policed;
            let mut unknown_uplinks = Vec::new();
            for name in targets.uplinks {
                match known.iter().find(|i| i.name == name) {
                    Some(i) => on.push(i.sw_if_index),
                    None => unknown_uplinks.push(name),
                }
            }
            let targets = crate::vnet_ifaces::share_targets(vm, &known, &on);
            let mut layer = crate::vnet_ifaces::VnetFlows::new(vm);
            ShareOutcome {
                interfaces: share_state().apply(&mut layer, generation, &rules, &targets),
                unknown_uplinks,
            }
        })
    }
}

type JobChannel = (Sender<Job>, Mutex<Option<Receiver<Job>>>);

static CAPO_CONTROL: CapoControl = CapoControl {
    channel: LazyLock::new(|| {
        let (tx, rx) = channel();
        (tx, Mutex::new(Some(rx)))
    }),
};

/// Asks the kernel for transparent huge pages on the mapping that holds VPP's main
/// heap (`crate::heap`), before the first generation is allocated there; says what
/// it did.
fn advise_main_heap() -> String {
    // Any allocation of ours is in the heap: VPP's malloc serves the plugin.
    let probe = Box::new(0_u64);
    let address = std::ptr::from_ref::<u64>(&probe) as usize;
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(t) => t,
        Err(e) => return format!("main heap left on its pages: reading /proc/self/maps: {e}"),
    };
    let Some(heap) = capo_heap::maps::mapping_holding(&maps, address) else {
        return format!("main heap left on its pages: no mapping holds {address:#x}");
    };
    if let Err(why) = crate::heap::advisable(&heap) {
        return format!("main heap left on its pages: {why}");
    }
    // SAFETY: the range is one mapping of this process as /proc/self/maps gave it
    // (holding a live allocation of ours, so it stays mapped; the kernel may have
    // merged a neighbouring anonymous mapping into it); MADV_HUGEPAGE changes how the
    // kernel backs memory, never its contents.
    let rc = unsafe {
        libc::madvise(
            heap.start as *mut libc::c_void,
            heap.len(),
            libc::MADV_HUGEPAGE,
        )
    };
    // Taken before anything else can set errno.
    let error = (rc != 0).then(std::io::Error::last_os_error);
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    match error {
        None => format!(
            "the mapping that holds VPP's main heap ({} MiB at {:#x}) advised for transparent huge pages (the kernel's THP modes: {})",
            heap.len() >> 20,
            heap.start,
            mode.trim()
        ),
        Some(e) => format!(
            "main heap left on its pages: madvise(MADV_HUGEPAGE) on {} MiB at {:#x}: {e}",
            heap.len() >> 20,
            heap.start
        ),
    }
}

/// `capo-control`: starts the plugin, then runs main-thread jobs.
#[vlib_process_node(name = "capo-control", instance = CAPO_CONTROL)]
struct CapoControl {
    channel: LazyLock<JobChannel>,
}

#[derive(NextNodes)]
enum ControlNext {}

#[derive(ErrorCounters)]
enum ControlError {}

impl ProcessNode for CapoControl {
    type NextNodes = ControlNext;
    type RuntimeData = ();
    type Errors = ControlError;

    async fn function(&self, vm: &mut MainRef, _node: &mut vlib::NodeRuntimeRef<Self>) {
        let Some(rx) = self
            .channel
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let config = CONFIG
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        if config.main_heap_huge_pages {
            eprintln!("capo: {}", advise_main_heap());
        }
        let plugin = PLUGIN.get_or_init(|| Plugin::new(config));
        match control::bind(&plugin.config) {
            Ok(listener) => {
                let core = Arc::new(Mutex::new(plugin.control_core(MainThread {
                    jobs: self.channel.0.clone(),
                })));
                let rebinder_core = Arc::clone(&core);
                let spawned = std::thread::Builder::new()
                    .name("capo-control".into())
                    .spawn(move || {
                        control::serve(listener, core, plugin, |e| eprintln!("capo: control: {e}"))
                    });
                if let Err(e) = spawned {
                    eprintln!("capo: cannot start the control thread: {e}");
                }
                let signal: &'static RebindSignal = &REBIND;
                crate::vnet_ifaces::notify_changes_to(signal);
                let spawned = std::thread::Builder::new()
                    .name("capo-rebind".into())
                    .spawn(move || {
                        control::run_rebinder(&rebinder_core, signal, REBIND_PERIOD, |m| {
                            eprintln!("capo: {m}")
                        })
                    });
                if let Err(e) = spawned {
                    eprintln!("capo: cannot start the rebind thread: {e}");
                }
            }
            Err(e) => eprintln!(
                "capo: cannot bind {}: {e}; no agent can connect",
                plugin.config.socket.display()
            ),
        }
        while let Some(job) = rx.recv().await {
            let guard = vm.barrier_sync();
            job(&guard);
        }
    }
}
