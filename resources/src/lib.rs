//! Kubernetes and Calico manifests to exactly the state Felix would send a
//! dataplane driver, so every capo feature works without a cluster.
//!
//! The flow is: [`Resources::load`] (or [`Resources::add_text`]) validates
//! manifests into typed objects; [`Resources::snapshot`] runs the
//! calculation Felix's calc graph does for one node and returns a
//! [`Snapshot`]; [`Snapshot::to_felix_messages`] renders it as Felix's
//! initial message stream, and [`diff`] gives the minimal update stream
//! between two snapshots. Everything after loading is pure and
//! deterministic: no I/O, clocks or randomness (the only I/O is in
//! [`Resources::load`] and [`manifest_files`]).
//!
//! What is validated where: every manifest field this crate reads is checked
//! when loaded, and errors name the file, the object and the field path
//! ([`Error`]). Unknown kinds are skipped with a [`Warning`]. Later stages
//! trust the loaded objects and cannot fail; nothing here panics.
//!
//! Faithfulness to Calico (v3.32+ wire schema; checked against libcalico-go
//! and Felix sources):
//! - Kubernetes NetworkPolicies become `KubernetesNetworkPolicy` policies in
//!   tier `default` at order 1000, one rule per protocol × peer.
//! - Selectors are combined with namespaces, namespace selectors (`pcns.`)
//!   and service-account matches (`pcsa.`) as libcalico-go's update
//!   processors do, and IP-set ids hash Calico's normalised selector text
//!   (`s:…`, named ports `n:…`).
//! - Pods carry `projectcalico.org/namespace`, `…/orchestrator: k8s` and
//!   `…/serviceaccount`, and inherit namespace and service-account labels
//!   through their `kns.`/`ksa.` profiles.
//! - Policies and tiers sort by order (unset last) then name; only policies
//!   matching a local endpoint, their IP sets, and the profiles of local
//!   endpoints are sent.
//!
//! Assumptions where a manifest set is less than a cluster: a pod without
//! `serviceAccountName` uses `default`; a namespace or service account used
//! by a pod but not given exists with no labels; every namespace carries
//! `kubernetes.io/metadata.name` as the API server sets it; the tiers `kube-admin`,
//! `default` and `kube-baseline` exist with Calico's orders unless given.
//! A pod's interface name is its `capo.dev/interface` annotation, else
//! Calico's `cali` + SHA-1 name.
//!
//! ```
//! use capo_resources::Resources;
//! use capo_resources::felix::to_dataplane::Payload;
//!
//! let mut r = Resources::new();
//! r.add_text(std::path::Path::new("pod.yaml"), "
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: ts2, namespace: default, labels: {role: receiver}}
//! spec: {nodeName: kind-worker2}
//! status: {podIP: 11.0.0.67}
//! ").unwrap();
//! let msgs = r.to_felix_messages(Some("kind-worker2"));
//! // Felix's stream: config first, the pod's endpoint, InSync last.
//! assert!(matches!(msgs[0].payload, Some(Payload::ConfigUpdate(_))));
//! assert!(msgs.iter().any(|m| matches!(m.payload, Some(Payload::WorkloadEndpointUpdate(_)))));
//! assert!(matches!(msgs.last().unwrap().payload, Some(Payload::InSync(_))));
//! ```

#![warn(missing_docs)]

mod calc;
mod error;
mod field;
mod hash;
mod k8s;
mod load;
mod model;
mod names;
mod resources;
mod rules;
mod selector;
mod snapshot;

pub use calc::Options;
pub use capo_proto::felix::v3_32 as felix;
pub use error::{Error, ObjectRef, Warning};
pub use load::manifest_files;
pub use resources::Resources;
pub use selector::{Labels, Selector, SelectorError};
pub use snapshot::{diff, number_from, IpSet, IpSetKind, PolicyRef, Snapshot, WorkloadRef};

impl Resources {
    /// What Felix on `opts.local_node` would hold for these resources.
    pub fn snapshot(&self, opts: &Options) -> Snapshot {
        calc::snapshot(self, opts)
    }

    /// Felix's full message stream for a driver on `local_node` (`None`:
    /// every pod is local), with default [`Options`].
    pub fn to_felix_messages(&self, local_node: Option<&str>) -> Vec<felix::ToDataplane> {
        self.snapshot(&Options::for_node(local_node))
            .to_felix_messages()
    }
}

/// Whether a `PolicyID.kind` is a staged kind (sent by Felix, never
/// enforced).
pub fn is_staged_kind(kind: &str) -> bool {
    calc::is_staged(kind)
}
