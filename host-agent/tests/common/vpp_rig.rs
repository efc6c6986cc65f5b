//! A real VPP 26.06 for the agent's tests: VPP started from `CAPO_VPP` with capo's
//! plugin loaded, pods as network namespaces on veth pairs attached with `create
//! host-interface` (af_packet), the agent and capoctl as processes.
//!
//! `CAPO_VPP=DIR` names a directory made by `scripts/vpp-setup.sh DIR`: VPP unpacked
//! under `DIR/vpp/` and the loadable plugin at `DIR/capo/libcapo_vpp_plugin.so`.
//! Without it, or without root or `ip netns`, [`Rig::available`] says what is missing
//! and the tests skip with that message; with `CAPO_VPP_REQUIRED=1` (CI) a missing
//! resource fails the test instead.
//!
//! Everything a test makes (runtime dir, sockets, shared-memory prefix, namespaces,
//! veths) is named after the process id and a counter, so runs never collide.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (`[a-z0-9]`, ≤ 8 characters).
pub(crate) fn unique() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:05x}{:x}", std::process::id() & 0xfffff, n)
}

/// Why the rig cannot run here, if it cannot.
pub(crate) fn missing() -> Option<String> {
    let Some(dir) = std::env::var_os("CAPO_VPP").map(PathBuf::from) else {
        return Some(
            "CAPO_VPP is not set: run `scripts/vpp-setup.sh DIR` (unpacks VPP 26.06 from \
             shared/vpp/ and builds the plugin against it) and set CAPO_VPP=DIR"
                .into(),
        );
    };
    for f in [
        "vpp/bin/vpp",
        "vpp/bin/vppctl",
        "capo/libcapo_vpp_plugin.so",
    ] {
        if !dir.join(f).exists() {
            return Some(format!(
                "{} is missing: run `scripts/vpp-setup.sh {}`",
                dir.join(f).display(),
                dir.display()
            ));
        }
    }
    // Root is needed for namespaces and af_packet.
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: network namespaces and af_packet need root".into());
    }
    let probe = format!("capoprobe{}", unique());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        return Some("`ip netns add` failed: no network namespaces here".into());
    }
    for tool in ["nc", "ip", "ping"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            return Some(format!(
                "{tool} is not installed (apt-get install netcat-openbsd iproute2 iputils-ping)"
            ));
        }
    }
    None
}

/// Skips the calling test (with the reason on stderr) when the rig cannot run, or
/// fails it when `CAPO_VPP_REQUIRED=1`.
#[macro_export]
macro_rules! require_vpp {
    () => {
        if let Some(why) = $crate::common::vpp_rig::missing() {
            if std::env::var_os("CAPO_VPP_REQUIRED").is_some_and(|v| v == "1") {
                panic!("real-VPP test cannot run and CAPO_VPP_REQUIRED=1: {why}");
            }
            eprintln!("SKIPPED (needs a real VPP): {why}");
            return;
        }
    };
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `f` is true, polling every 100 ms; panics with `what` after `limit`.
pub(crate) fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One VPP process.
pub(crate) struct Vpp {
    pub root: PathBuf,
    pub run_dir: PathBuf,
    pub capo_socket: PathBuf,
    child: Option<Child>,
    prefix: String,
    workers: u32,
}

impl Vpp {
    /// Starts VPP with capo's plugin (`capo { socket … }` in `run_dir`).
    pub(crate) fn start(run_dir: &Path, workers: u32) -> Vpp {
        let root = PathBuf::from(std::env::var_os("CAPO_VPP").unwrap());
        std::fs::create_dir_all(run_dir).unwrap();
        let mut vpp = Vpp {
            root,
            run_dir: run_dir.to_path_buf(),
            capo_socket: run_dir.join("capo.sock"),
            child: None,
            prefix: format!("capo{}", unique()),
            workers,
        };
        vpp.launch();
        vpp
    }

    fn launch(&mut self) {
        let rt = self.run_dir.display().to_string();
        let plugins = self.root.join("vpp/lib/x86_64-linux-gnu/vpp_plugins");
        let cpu = if self.workers > 0 {
            format!("cpu {{ workers {} }}\n", self.workers)
        } else {
            String::new()
        };
        let conf = format!(
            "unix {{ nodaemon cli-listen {rt}/cli.sock log {rt}/vpp.log runtime-dir {rt} poll-sleep-usec 100 }}\n\
             api-segment {{ prefix {prefix} }}\n\
             socksvr {{ socket-name {rt}/api.sock }}\n\
             statseg {{ socket-name {rt}/stats.sock page-size 4k size 32m }}\n\
             memory {{ main-heap-size 1G main-heap-page-size 4k }}\n\
             buffers {{ buffers-per-numa 16384 page-size 4k }}\n\
             {cpu}\
             plugins {{ path {plugins}:{capo} plugin dpdk_plugin.so {{ disable }} }}\n\
             capo {{ socket {rt}/capo.sock }}\n",
            prefix = self.prefix,
            plugins = plugins.display(),
            capo = self.root.join("capo").display(),
        );
        std::fs::write(self.run_dir.join("startup.conf"), conf).unwrap();
        let _ = std::fs::remove_file(self.run_dir.join("cli.sock"));
        let out = std::fs::File::create(self.run_dir.join("vpp.out")).unwrap();
        let child = Command::new(self.root.join("vpp/bin/vpp"))
            .arg("-c")
            .arg(self.run_dir.join("startup.conf"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let cli = self.run_dir.join("cli.sock");
        wait_for(Duration::from_secs(30), "VPP's CLI socket", || {
            cli.exists()
                && self
                    .try_ctl("show version")
                    .is_some_and(|v| v.contains("vpp"))
        });
        wait_for(Duration::from_secs(10), "capo's control socket", || {
            self.capo_socket.exists()
        });
    }

    /// Kills VPP (as a crash would) and starts it again with the same configuration.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_ctl(&self, cmd: &str) -> Option<String> {
        let out = Command::new(self.root.join("vpp/bin/vppctl"))
            .arg("-s")
            .arg(self.run_dir.join("cli.sock"))
            .args(cmd.split_whitespace())
            .output()
            .ok()?;
        // vppctl talks to a terminal-like CLI: lines end in CRLF.
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"))
    }

    /// Runs a vppctl command; its output.
    pub(crate) fn ctl(&self, cmd: &str) -> String {
        self.try_ctl(cmd)
            .unwrap_or_else(|| panic!("vppctl {cmd} failed; log: {}", self.log()))
    }

    /// VPP's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// VPP's stdout/stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("vpp.out")).unwrap_or_default()
    }
}

impl Drop for Vpp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pod: a network namespace whose `eth0` is a veth to the root namespace, attached
/// to VPP with `create host-interface`.
pub(crate) struct Pod {
    pub ns: String,
    /// The root-namespace end of the veth.
    pub veth: String,
    /// VPP's name of the interface (`host-<veth>`).
    pub vpp_if: String,
    pub ip4: String,
    pub ip6: String,
    pub mac: String,
    /// VPP's address on the pod's link.
    pub gw4: String,
    pub gw6: String,
    pub vpp_mac: String,
}

impl Pod {
    /// The namespace and veth, not yet attached to VPP.
    pub(crate) fn new(tag: &str, ip4: &str, gw4: &str, ip6: &str, gw6: &str, n: u8) -> Pod {
        let id = unique();
        let pod = Pod {
            ns: format!("capo-{id}-{tag}"),
            veth: format!("cv{id}"),
            vpp_if: format!("host-cv{id}"),
            ip4: ip4.into(),
            ip6: ip6.into(),
            mac: format!("02:00:00:00:{n:02x}:01"),
            gw4: gw4.into(),
            gw6: gw6.into(),
            vpp_mac: format!("02:fe:00:00:{n:02x}:01"),
        };
        run("ip", &["netns", "add", &pod.ns]);
        run(
            "ip",
            &[
                "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
            ],
        );
        run("ip", &["link", "set", &pod.veth, "up"]);
        let ns = pod.ns.clone();
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", ns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["link", "set", "eth0", "address", &pod.mac]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["addr", "add", &format!("{ip4}/26"), "dev", "eth0"]);
        inside(&["route", "add", "default", "via", gw4]);
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/112"),
            "dev",
            "eth0",
            "nodad",
        ]);
        inside(&["-6", "route", "add", "default", "via", gw6]);
        // No static neighbours: IPv6 neighbour discovery crosses capo's nodes, and
        // must pass whatever the pod's policy (Felix accepts it before policy).
        pod
    }

    /// Attaches the pod to VPP: host-interface and addresses.
    pub(crate) fn attach(&self, vpp: &Vpp) {
        vpp.ctl(&format!(
            "create host-interface name {} hw-addr {}",
            self.veth, self.vpp_mac
        ));
        vpp.ctl(&format!("set interface state {} up", self.vpp_if));
        vpp.ctl(&format!(
            "set interface ip address {} {}/26",
            self.vpp_if, self.gw4
        ));
        vpp.ctl(&format!(
            "set interface ip address {} {}/112",
            self.vpp_if, self.gw6
        ));
    }

    /// Removes the pod's interface from VPP.
    pub(crate) fn detach(&self, vpp: &Vpp) {
        vpp.ctl(&format!("delete host-interface name {}", self.veth));
    }

    /// VPP's sw_if_index of the pod's interface.
    pub(crate) fn sw_if_index(&self, vpp: &Vpp) -> u32 {
        let out = vpp.ctl("show interface");
        out.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(self.vpp_if.as_str()))
                    .then(|| w.next().and_then(|i| i.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("{} not in VPP:\n{out}", self.vpp_if))
    }

    /// Runs a command in the pod.
    pub(crate) fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The seed's two pods: ts1 (sender) and ts2 (receiver), with the seed's addresses.
pub(crate) fn seed_pods() -> (Pod, Pod) {
    let ts1 = Pod::new(
        "ts1",
        "11.0.0.196",
        "11.0.0.193",
        "fd20::58fd:b191:5c13:9cc3",
        "fd20::58fd:b191:5c13:1",
        1,
    );
    let ts2 = Pod::new(
        "ts2",
        "11.0.0.67",
        "11.0.0.65",
        "fd20::1cc0:b1ac:ad47:e7c2",
        "fd20::1cc0:b1ac:ad47:1",
        2,
    );
    (ts1, ts2)
}

/// A listener on `port` in `pod` that writes what it receives to `out`.
pub(crate) struct Listener {
    child: Child,
    pub out: PathBuf,
}

impl Listener {
    pub(crate) fn start(pod: &Pod, port: u16, v6: bool, out: PathBuf) -> Listener {
        let file = std::fs::File::create(&out).unwrap();
        let mut cmd = pod.exec(&["nc", "-k", "-l"]);
        if v6 {
            cmd.arg("-6");
        }
        let child = cmd
            .arg(port.to_string())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Listening before the first connect (so a failed connect is the policy's).
        let listening = || {
            pod.exec(&["ss", "-Hltn", &format!("sport = :{port}")])
                .output()
                .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
        };
        wait_for(Duration::from_secs(10), "the listener", listening);
        Listener { child, out }
    }

    pub(crate) fn received(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `echo DATA | nc -N -w 3 DST PORT` from `pod`: whether it connected and sent.
pub(crate) fn send(pod: &Pod, dst: &str, port: u16, data: &str) -> bool {
    let mut child = pod
        .exec(&["nc", "-N", "-w", "3", dst, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = writeln!(stdin, "{data}");
    }
    child.wait().unwrap().success()
}

/// `ping -c COUNT -W 1 DST` from `pod`: whether any reply came back.
pub(crate) fn ping(pod: &Pod, dst: &str, count: u32) -> bool {
    pod.exec(&["ping", "-n", "-c", &count.to_string(), "-W", "1", dst])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running capo-agent.
pub(crate) struct Agent {
    child: Option<Child>,
    pub api: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Agent {
    /// Starts `capo-agent --dataplane vpp:SOCKET --resources DIR --node kind-worker2`
    /// plus `extra`.
    pub(crate) fn start(vpp: &Vpp, manifests: &Path, dir: &Path, extra: &[&str]) -> Agent {
        let api = dir.join(format!("agent-{}.sock", unique()));
        let mut args = vec![
            "--resources".to_string(),
            manifests.display().to_string(),
            "--node".into(),
            "kind-worker2".into(),
            "--poll-interval".into(),
            "200ms".into(),
            format!("--dataplane=vpp:{}", vpp.capo_socket.display()),
            "--api-socket".into(),
            api.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = Agent {
            child: None,
            api,
            log: dir.join(format!("agent-{}.log", unique())),
            args,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let api = self.api.clone();
        wait_for(Duration::from_secs(20), "the agent's API socket", || {
            api.exists()
        });
    }

    /// `kill -9`.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.api);
    }

    /// Starts it again with the same arguments.
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// capoctl against this agent: (exit code, stdout, stderr).
    pub(crate) fn capoctl(&self, args: &[&str]) -> (i32, String, String) {
        super::capoctl_at(&self.api, args)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The seed's manifests in `dir`, ts2 bound by the annotation `capo.dev/interface`
/// to `interface` (the endpoint's interface name), and the NetworkPolicy allowing
/// `port`.
pub(crate) fn seed_manifests(dir: &Path, interface: &str, port: u16) -> PathBuf {
    let m = dir.join(format!("manifests-{}", unique()));
    std::fs::create_dir_all(&m).unwrap();
    write_seed(&m, interface, port);
    m
}

/// Rewrites the manifests in place (the agent polls them).
pub(crate) fn write_seed(m: &Path, interface: &str, port: u16) {
    let seed = super::seed_dir();
    for f in ["namespace.yaml", "nodes.yaml"] {
        std::fs::copy(seed.join(f), m.join(f)).unwrap();
    }
    let pods = std::fs::read_to_string(seed.join("pods.yaml"))
        .unwrap()
        .replace(
            "capo.dev/interface: tun3",
            &format!("capo.dev/interface: {interface}"),
        );
    std::fs::write(m.join("pods.yaml"), pods).unwrap();
    let np = std::fs::read_to_string(seed.join("networkpolicy.yaml"))
        .unwrap()
        .replace("port: 5978", &format!("port: {port}"));
    std::fs::write(m.join("networkpolicy.yaml"), np).unwrap();
}
