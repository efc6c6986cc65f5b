//! The loaded cluster: every supported object, validated, keyed by identity.
//! Parsing text is pure ([`Resources::add_text`]); reading files and
//! directories lives in [`crate::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize as _;
use serde_json::Value;

use crate::error::{Error, FieldError, ObjectRef, Warning};
use crate::field::{At, FResult};
use crate::model::{
    self, HostEndpoint, NetSet, Node, Pod, Policy, PolicyKind, Profile, ServiceAccount, Tier,
    INTERFACE_ANNOTATION,
};
use crate::{hash, k8s};

/// Identity of a policy as Felix keys it.
pub(crate) type PolicyKey = (PolicyKind, Option<String>, String);

/// Every object loaded from a set of manifests. Build one with
/// [`Resources::load`](crate::Resources::load) (files) or
/// [`Resources::add_text`] (text you already hold), then turn it into Felix
/// state with [`Resources::snapshot`](crate::Resources::snapshot).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub(crate) namespaces: BTreeMap<String, model::Namespace>,
    pub(crate) service_accounts: BTreeMap<(String, String), ServiceAccount>,
    pub(crate) pods: BTreeMap<(String, String), Pod>,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) tiers: BTreeMap<String, Tier>,
    pub(crate) policies: BTreeMap<PolicyKey, Policy>,
    /// NetworkSets keyed by (Some(namespace), name); GlobalNetworkSets by (None, name).
    pub(crate) net_sets: BTreeMap<(Option<String>, String), NetSet>,
    pub(crate) host_endpoints: BTreeMap<String, HostEndpoint>,
    pub(crate) profiles: BTreeMap<String, Profile>,
    /// Felix configuration from a `FelixConfiguration` object.
    pub(crate) felix_config: BTreeMap<String, String>,
    origins: BTreeMap<ObjectRef, PathBuf>,
    warnings: Vec<Warning>,
    /// Fields of the object being added that capo cannot enforce (become warnings).
    unenforced: Vec<String>,
}

/// The kinds this crate understands, by (apiVersion group, kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Namespace,
    Pod,
    ServiceAccount,
    Node,
    K8sNetworkPolicy,
    CalicoPolicy(PolicyKind),
    StagedK8sPolicy,
    Tier,
    NetworkSet,
    GlobalNetworkSet,
    HostEndpoint,
    Profile,
    CalicoNode,
    FelixConfiguration,
}

impl Kind {
    /// The kind of `apiVersion`/`kind`: `Ok(None)` for a kind capo does not know
    /// (skipped with a warning), `Err` for a kind it knows under a version or group
    /// that cannot be applied (skipping it would drop policy silently).
    fn resolve(api_version: &str, kind: &str) -> Result<Option<Kind>, String> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let served = |g: &str| match g {
            "" | "networking.k8s.io" => "v1",
            _ => "v3",
        };
        if group == "crd.projectcalico.org" {
            return match Kind::from(&format!("projectcalico.org/{version}"), kind) {
                Some(_) => Err(format!(
                    "{api_version}: this is how Calico stores a {kind} in its CRDs, not an API \
                     to apply; write it as projectcalico.org/v3 (as calicoctl get -o yaml prints it)"
                )),
                None => Ok(None),
            };
        }
        match Kind::from(api_version, kind) {
            Some(k) if version == served(group) => Ok(Some(k)),
            Some(_) => Err(format!(
                "{api_version:?}: {kind} is served as {}{}{}, not version {version:?}",
                group,
                if group.is_empty() { "" } else { "/" },
                served(group)
            )),
            None => Ok(None),
        }
    }

    fn from(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Some(match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Pod") => Kind::Pod,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            ("", "Node") => Kind::Node,
            ("networking.k8s.io", "NetworkPolicy") => Kind::K8sNetworkPolicy,
            ("projectcalico.org", k) => match k {
                "NetworkPolicy" => Kind::CalicoPolicy(PolicyKind::NetworkPolicy),
                "GlobalNetworkPolicy" => Kind::CalicoPolicy(PolicyKind::GlobalNetworkPolicy),
                "StagedNetworkPolicy" => Kind::CalicoPolicy(PolicyKind::StagedNetworkPolicy),
                "StagedGlobalNetworkPolicy" => {
                    Kind::CalicoPolicy(PolicyKind::StagedGlobalNetworkPolicy)
                }
                "StagedKubernetesNetworkPolicy" => Kind::StagedK8sPolicy,
                "Tier" => Kind::Tier,
                "NetworkSet" => Kind::NetworkSet,
                "GlobalNetworkSet" => Kind::GlobalNetworkSet,
                "HostEndpoint" => Kind::HostEndpoint,
                "Profile" => Kind::Profile,
                "Node" => Kind::CalicoNode,
                "FelixConfiguration" => Kind::FelixConfiguration,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Pod
                | Kind::ServiceAccount
                | Kind::K8sNetworkPolicy
                | Kind::StagedK8sPolicy
                | Kind::NetworkSet
                | Kind::CalicoPolicy(PolicyKind::NetworkPolicy | PolicyKind::StagedNetworkPolicy)
        )
    }
}

struct Meta {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Resources {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// The addresses of pod `namespace/name` (empty for a finished pod), or
    /// `None` when there is no such pod.
    pub fn pod_ips(&self, namespace: &str, name: &str) -> Option<&[std::net::IpAddr]> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|p| {
                if p.finished {
                    &[][..]
                } else {
                    p.ips.as_slice()
                }
            })
    }

    /// What was skipped or assumed while loading (unknown kinds, staged
    /// deletions, ...).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Adds every object in `text`, which came from `file` (used in errors,
    /// and to pick JSON for `.json` names, YAML otherwise). YAML may hold
    /// several documents; `kind: List` (or `…List`) objects are expanded.
    ///
    /// # Errors
    /// [`Error::Syntax`] for text that is not YAML/JSON, [`Error::Invalid`]
    /// for an invalid object, [`Error::Duplicate`] for an object seen before.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), Error> {
        let is_json = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let docs: Vec<Value> = if is_json {
            let v: Value = serde_json::from_str(text).map_err(|e| Error::Syntax {
                file: file.to_path_buf(),
                document: 0,
                message: e.to_string(),
            })?;
            match v {
                Value::Array(items) => items,
                other => vec![other],
            }
        } else {
            let mut docs = Vec::new();
            for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
                let v = Value::deserialize(doc).map_err(|e| Error::Syntax {
                    file: file.to_path_buf(),
                    document: i,
                    message: e.to_string(),
                })?;
                docs.push(v);
            }
            docs
        };
        for (i, doc) in docs.iter().enumerate() {
            self.add_document(file, i, doc)?;
        }
        Ok(())
    }

    fn add_document(&mut self, file: &Path, index: usize, doc: &Value) -> Result<(), Error> {
        if doc.is_null() {
            return Ok(());
        }
        if !doc.is_object() {
            return Err(Error::Syntax {
                file: file.to_path_buf(),
                document: index,
                message: "a manifest must be a map".to_string(),
            });
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some()) {
            if let Some(items) = doc.get("items").and_then(Value::as_array) {
                for item in items {
                    self.add_document(file, index, item)?;
                }
            }
            return Ok(());
        }
        self.add_object(file, doc)
    }

    fn add_object(&mut self, file: &Path, doc: &Value) -> Result<(), Error> {
        let root = At::root(doc);
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind_name = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let raw_name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let resolved = Kind::resolve(api_version, kind_name).map_err(|reason| Error::Invalid {
            file: file.to_path_buf(),
            object: Box::new(ObjectRef {
                kind: kind_name.to_string(),
                namespace: None,
                name: raw_name.to_string(),
            }),
            field: "apiVersion".to_string(),
            reason,
        })?;
        let Some(kind) = resolved else {
            self.warnings.push(Warning {
                file: file.to_path_buf(),
                object: Some(ObjectRef {
                    kind: kind_name.to_string(),
                    namespace: None,
                    name: raw_name.to_string(),
                }),
                message: format!("skipped: unsupported kind {kind_name:?} of {api_version:?}"),
            });
            return Ok(());
        };
        let namespace = kind.namespaced().then(|| {
            doc.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                // kubectl's default for a namespaced object without one.
                .unwrap_or("default")
                .to_string()
        });
        let object = ObjectRef {
            kind: kind_name.to_string(),
            namespace: namespace.clone(),
            name: raw_name.to_string(),
        };
        let wrap = |e: FieldError| Error::Invalid {
            file: file.to_path_buf(),
            object: Box::new(object.clone()),
            field: e.field,
            reason: e.reason,
        };
        let meta = meta(&root, namespace.as_deref()).map_err(wrap)?;
        if let Some(first) = self.origins.get(&object) {
            return Err(Error::Duplicate {
                file: file.to_path_buf(),
                object: Box::new(object),
                first: first.clone(),
            });
        }
        self.origins.insert(object.clone(), file.to_path_buf());
        self.parse_kind(kind, &root, meta).map_err(wrap)?;
        for field in std::mem::take(&mut self.unenforced) {
            self.warnings.push(Warning {
                file: file.to_path_buf(),
                object: Some(object.clone()),
                message: format!(
                    "{field}: HTTP matches need Calico's application layer policy, which capo \
                     does not provide; this rule is enforced on its other fields only"
                ),
            });
        }
        Ok(())
    }

    fn parse_kind(&mut self, kind: Kind, root: &At<'_>, meta: Meta) -> FResult<()> {
        let spec = root.get("spec");
        let empty = Value::Object(serde_json::Map::new());
        let spec = spec.unwrap_or_else(|| At {
            v: &empty,
            path: "spec".to_string(),
        });
        match kind {
            Kind::Namespace => {
                if !valid_dns_label(&meta.name) {
                    return Err(root.err_at(
                        "metadata.name",
                        format!("{:?} is not a valid namespace name", meta.name),
                    ));
                }
                self.namespaces.insert(
                    meta.name.clone(),
                    model::Namespace {
                        name: meta.name,
                        labels: meta.labels,
                    },
                );
            }
            Kind::ServiceAccount => {
                self.service_accounts.insert(
                    (meta.namespace.clone(), meta.name.clone()),
                    ServiceAccount {
                        namespace: meta.namespace,
                        name: meta.name,
                        labels: meta.labels,
                    },
                );
            }
            Kind::Pod => {
                let pod = pod(root, &spec, meta)?;
                self.pods
                    .insert((pod.namespace.clone(), pod.name.clone()), pod);
            }
            Kind::Node => {
                let node = k8s_node(root, meta)?;
                self.nodes.insert(node.name.clone(), node);
            }
            Kind::CalicoNode => {
                let bgp = spec.get("bgp");
                let field = |k: &str| -> FResult<String> {
                    match &bgp {
                        Some(b) => {
                            let v = b.str_or_empty(k)?;
                            if !v.is_empty() {
                                let at = b.get(k).unwrap_or_else(|| b.clone());
                                cidr_keep_host(&at, &v)?;
                            }
                            Ok(v)
                        }
                        None => Ok(String::new()),
                    }
                };
                let node = Node {
                    ipv4: field("ipv4Address")?,
                    ipv6: field("ipv6Address")?,
                    asn: match bgp.as_ref().and_then(|b| b.get("asNumber")) {
                        Some(a) => a.int(0, i64::from(u32::MAX))?.to_string(),
                        None => String::new(),
                    },
                    name: meta.name,
                    labels: meta.labels,
                };
                self.nodes.insert(node.name.clone(), node);
            }
            Kind::K8sNetworkPolicy | Kind::StagedK8sPolicy => {
                let policy_kind = if kind == Kind::StagedK8sPolicy {
                    if staged_delete(&spec)? {
                        return Ok(());
                    }
                    PolicyKind::StagedKubernetesNetworkPolicy
                } else {
                    PolicyKind::KubernetesNetworkPolicy
                };
                let p = k8s::network_policy(&spec, &meta.namespace, &meta.name, policy_kind)?;
                self.insert_policy(p);
            }
            Kind::CalicoPolicy(pk) => {
                if matches!(
                    pk,
                    PolicyKind::StagedNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy
                ) && staged_delete(&spec)?
                {
                    return Ok(());
                }
                let p = calico_policy(&spec, pk, &meta)?;
                self.insert_policy(p);
            }
            Kind::Tier => {
                spec.only(&["order", "defaultAction"])?;
                let order = spec.get("order").map(|o| o.float()).transpose()?;
                let pass = match spec.get("defaultAction") {
                    None => false,
                    Some(a) => match a.str()? {
                        "Deny" => false,
                        "Pass" => true,
                        other => return Err(a.err(format!("{other:?} is not Deny or Pass"))),
                    },
                };
                self.tiers.insert(
                    meta.name.clone(),
                    Tier {
                        name: meta.name,
                        order,
                        pass,
                    },
                );
            }
            Kind::NetworkSet | Kind::GlobalNetworkSet => {
                if let Some(d) = spec.get("allowedEgressDomains") {
                    return Err(d.err(
                        "domain-based sets are not supported by capo (it would match nothing): \
                         use nets",
                    ));
                }
                spec.only(&["nets"])?;
                let ns = (kind == Kind::NetworkSet).then(|| meta.namespace.clone());
                let nets = spec
                    .items("nets")?
                    .iter()
                    .map(model::net)
                    .collect::<FResult<Vec<IpNet>>>()?;
                self.net_sets.insert(
                    (ns.clone(), meta.name.clone()),
                    NetSet {
                        namespace: ns,
                        name: meta.name,
                        labels: meta.labels,
                        nets,
                    },
                );
            }
            Kind::HostEndpoint => {
                spec.only(&["node", "interfaceName", "expectedIPs", "profiles", "ports"])?;
                let node = spec.req_str("node")?.to_string();
                let interface = spec.str_or_empty("interfaceName")?;
                let expected_ips = model::ip_list(&spec, "expectedIPs")?;
                if interface.is_empty() && expected_ips.is_empty() {
                    return Err(spec.err("needs interfaceName or expectedIPs"));
                }
                let hep = HostEndpoint {
                    name: meta.name.clone(),
                    node,
                    interface,
                    expected_ips,
                    profiles: spec.str_list("profiles")?,
                    labels: meta.labels,
                    ports: model::endpoint_ports(&spec)?,
                };
                self.host_endpoints.insert(meta.name, hep);
            }
            Kind::Profile => {
                spec.only(&["labelsToApply", "ingress", "egress"])?;
                let p = Profile {
                    name: meta.name.clone(),
                    labels_to_apply: spec.str_map("labelsToApply")?,
                    ingress: model::rules(&spec, "ingress")?,
                    egress: model::rules(&spec, "egress")?,
                };
                self.profiles.insert(meta.name, p);
            }
            Kind::FelixConfiguration => {
                if let Some(a) = spec.get("defaultEndpointToHostAction") {
                    let v = match a.str()? {
                        "Drop" => "DROP",
                        "Accept" => "ACCEPT",
                        "Return" => "RETURN",
                        other => {
                            return Err(a.err(format!("{other:?} is not Drop, Accept or Return")))
                        }
                    };
                    self.felix_config
                        .insert("DefaultEndpointToHostAction".to_string(), v.to_string());
                }
                for (key, felix_key) in [
                    ("failsafeInboundHostPorts", "FailsafeInboundHostPorts"),
                    ("failsafeOutboundHostPorts", "FailsafeOutboundHostPorts"),
                ] {
                    if spec.get(key).is_none() {
                        continue;
                    }
                    let mut parts = Vec::new();
                    for p in spec.items(key)? {
                        let proto = p.opt_str("protocol")?.unwrap_or("TCP").to_ascii_lowercase();
                        let port = p.req("port")?.int(0, 65535)?;
                        let part = match p.opt_str("net")? {
                            Some(net) if !net.is_empty() => format!("{proto}:{net}:{port}"),
                            _ => format!("{proto}:{port}"),
                        };
                        // Validated here, as Felix will read it: a value Felix would
                        // refuse is this file's error, not a dropped sync later.
                        if let Err(e) = capo_policy::config::parse_failsafe_ports(&part) {
                            return Err(p.err(e.to_string()));
                        }
                        parts.push(part);
                    }
                    self.felix_config
                        .insert(felix_key.to_string(), parts.join(","));
                }
            }
        }
        Ok(())
    }

    fn insert_policy(&mut self, p: Policy) {
        // HTTP matches need Calico's application layer policy (an Envoy sidecar),
        // which capo is not: such a rule is enforced on its L3/L4 fields only.
        let http_rules = [("ingress", &p.ingress_rules), ("egress", &p.egress_rules)]
            .into_iter()
            .flat_map(|(dir, rules)| {
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.http.is_some())
                    .map(move |(i, _)| format!("spec.{dir}[{i}].http"))
            });
        self.unenforced.extend(http_rules);
        self.policies
            .insert((p.kind, p.namespace.clone(), p.name.clone()), p);
    }
}

/// Kubernetes namespace names are DNS labels; anything else could not be
/// quoted into the selectors Calico builds from them.
fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn meta(root: &At<'_>, namespace: Option<&str>) -> FResult<Meta> {
    let m = root.req("metadata")?;
    if let Some(ns) = namespace {
        if !valid_dns_label(ns) {
            return Err(m.err_at("namespace", format!("{ns:?} is not a valid namespace name")));
        }
    }
    Ok(Meta {
        name: m.req_str("name")?.to_string(),
        namespace: namespace.unwrap_or_default().to_string(),
        labels: m.label_map("labels")?,
        annotations: m.str_map("annotations")?,
    })
}

fn staged_delete(spec: &At<'_>) -> FResult<bool> {
    match spec.get("stagedAction") {
        None => Ok(false),
        Some(a) => match a.str()? {
            "Delete" => Ok(true),
            "Set" | "Learn" | "Ignore" => Ok(false),
            other => Err(a.err(format!(
                "{other:?} is not a staged action (Set, Delete, Learn, Ignore)"
            ))),
        },
    }
}

fn calico_policy(spec: &At<'_>, kind: PolicyKind, meta: &Meta) -> FResult<Policy> {
    let global = matches!(
        kind,
        PolicyKind::GlobalNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy
    );
    // Calico's validator: these apply only to GlobalNetworkPolicy.
    if !global {
        for k in [
            "namespaceSelector",
            "doNotTrack",
            "preDNAT",
            "applyOnForward",
        ] {
            if spec.get(k).is_some() {
                return Err(spec.err_at(k, "is only valid in a GlobalNetworkPolicy"));
            }
        }
    }
    let staged = matches!(
        kind,
        PolicyKind::StagedNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy
    );
    let mut known = vec![
        "order",
        "tier",
        "selector",
        "types",
        "ingress",
        "egress",
        "serviceAccountSelector",
        "performanceHints",
    ];
    if global {
        known.extend([
            "namespaceSelector",
            "doNotTrack",
            "preDNAT",
            "applyOnForward",
        ]);
    }
    if staged {
        known.push("stagedAction");
    }
    spec.only(&known)?;
    let ingress_rules = model::rules(spec, "ingress")?;
    let egress_rules = model::rules(spec, "egress")?;
    let (ingress, egress) = model::policy_types(spec, &ingress_rules, &egress_rules)?;
    let tier = spec.str_or_empty("tier")?;
    let flags = |k: &str| if global { spec.bool(k) } else { Ok(false) };
    let pre_dnat = flags("preDNAT")?;
    let apply_on_forward = flags("applyOnForward")?;
    if pre_dnat && !apply_on_forward {
        return Err(spec.err_at("applyOnForward", "must be true when preDNAT is"));
    }
    // Calico's validator, as calicoctl applies it.
    let do_not_track = flags("doNotTrack")?;
    if do_not_track && !apply_on_forward {
        return Err(spec.err_at("applyOnForward", "must be true when doNotTrack is"));
    }
    if pre_dnat && do_not_track {
        return Err(spec.err_at("doNotTrack", "cannot be true when preDNAT is"));
    }
    if pre_dnat && (egress || !egress_rules.is_empty()) {
        return Err(spec.err_at(
            if egress_rules.is_empty() {
                "types"
            } else {
                "egress"
            },
            "a preDNAT policy applies to ingress only: no Egress type or egress rules",
        ));
    }
    let namespace_selector = if global {
        model::selector_field(spec, "namespaceSelector")?
    } else {
        String::new()
    };
    Ok(Policy {
        kind,
        namespace: (!global).then(|| meta.namespace.clone()),
        name: meta.name.clone(),
        tier: if tier.is_empty() {
            "default".to_string()
        } else {
            tier
        },
        order: spec.get("order").map(|o| o.float()).transpose()?,
        selector: model::selector_field(spec, "selector")?,
        namespace_selector,
        service_account_selector: model::selector_field(spec, "serviceAccountSelector")?,
        ingress,
        egress,
        ingress_rules,
        egress_rules,
        do_not_track,
        pre_dnat,
        apply_on_forward,
        perf_hints: spec.str_list("performanceHints")?,
    })
}

fn pod(root: &At<'_>, spec: &At<'_>, meta: Meta) -> FResult<Pod> {
    let status = root.get("status");
    let mut ips = Vec::new();
    if let Some(st) = &status {
        // Calico reads status.podIPs, else status.podIP.
        let multi = st.items("podIPs")?;
        if multi.is_empty() {
            if let Some(p) = st.get("podIP") {
                ips.push(model::ip_str(&p)?);
            }
        } else {
            for p in multi {
                ips.push(model::ip_str(&p.req("ip")?)?);
            }
        }
    }
    if ips.is_empty() {
        // Calico's CNI annotations are the fallback source of pod IPs.
        for key in [
            "cni.projectcalico.org/podIPs",
            "cni.projectcalico.org/podIP",
        ] {
            if let Some(v) = meta.annotations.get(key).filter(|v| !v.is_empty()) {
                for part in v.split(',') {
                    let part = part.trim();
                    let addr = part.split('/').next().unwrap_or(part);
                    let ip = addr.parse().map_err(|_| FieldError {
                        field: format!("metadata.annotations.{key}"),
                        reason: format!("{part:?} is not an IP address"),
                    })?;
                    ips.push(ip);
                }
                break;
            }
        }
    }
    let phase = match &status {
        Some(st) => st.str_or_empty("phase")?,
        None => String::new(),
    };
    let mut service_account = spec.str_or_empty("serviceAccountName")?;
    if service_account.is_empty() {
        service_account = spec.str_or_empty("serviceAccount")?;
    }
    if service_account.is_empty() {
        // The API server's admission fills in "default".
        service_account = "default".to_string();
    }
    let interface = match meta.annotations.get(INTERFACE_ANNOTATION) {
        Some(i) if !i.is_empty() => i.clone(),
        _ => hash::veth_name(&meta.namespace, &meta.name),
    };
    Ok(Pod {
        namespace: meta.namespace,
        name: meta.name,
        labels: meta.labels,
        node: spec.str_or_empty("nodeName")?,
        host_network: spec.bool("hostNetwork")?,
        service_account,
        ips,
        ports: model::container_ports(spec)?,
        finished: matches!(phase.as_str(), "Succeeded" | "Failed" | "Completed"),
        interface,
    })
}

/// A host CIDR as Felix passes it through: host bits kept.
fn cidr_keep_host(at: &At<'_>, s: &str) -> FResult<IpNet> {
    s.parse::<IpNet>()
        .map_err(|_| at.err(format!("{s:?} is not a CIDR")))
}

fn k8s_node(root: &At<'_>, meta: Meta) -> FResult<Node> {
    let addr = |ann: &str, v6: bool| -> FResult<String> {
        if let Some(a) = meta.annotations.get(ann).filter(|a| !a.is_empty()) {
            let at = At {
                v: root.v,
                path: format!("metadata.annotations.{ann}"),
            };
            let n = cidr_keep_host(&at, a)?;
            if matches!(n, IpNet::V6(_)) != v6 {
                return Err(at.err("is of the wrong address family"));
            }
            return Ok(n.to_string());
        }
        // Felix falls back to the InternalIP, then the ExternalIP.
        let Some(status) = root.get("status") else {
            return Ok(String::new());
        };
        let addresses = status.items("addresses")?;
        for want in ["InternalIP", "ExternalIP"] {
            for a in &addresses {
                if a.str_or_empty("type")? != want {
                    continue;
                }
                let ip = model::ip_str(&a.req("address")?)?;
                if ip.is_ipv6() == v6 {
                    return Ok(IpNet::from(ip).to_string());
                }
            }
        }
        Ok(String::new())
    };
    let ipv4 = addr("projectcalico.org/IPv4Address", false)?;
    let ipv6 = addr("projectcalico.org/IPv6Address", true)?;
    let asn = meta
        .annotations
        .get("projectcalico.org/ASNumber")
        .cloned()
        .unwrap_or_default();
    Ok(Node {
        name: meta.name,
        labels: meta.labels,
        ipv4,
        ipv6,
        asn,
    })
}
