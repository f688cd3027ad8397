//! Built-in registries: `memory` (one process) and `local` (all processes
//! of one machine, no daemon: the zero-set-up default).

mod local;
mod memory;
#[cfg(test)]
mod tests_common;

pub use local::LocalRegistry;
pub use memory::MemoryRegistry;

use micro_core::{Event, EventKind, Service};

/// Merges registrations into per-version services, as go-micro's registries do.
pub(crate) fn merge(records: impl IntoIterator<Item = Service>) -> Vec<Service> {
    let mut out: Vec<Service> = Vec::new();
    for rec in records {
        match out.iter_mut().find(|s| s.name == rec.name && s.version == rec.version) {
            Some(s) => {
                for n in rec.nodes {
                    s.nodes.retain(|m| m.id != n.id);
                    s.nodes.push(n);
                }
                if s.endpoints.is_empty() {
                    s.endpoints = rec.endpoints;
                }
            }
            None => out.push(rec),
        }
    }
    for s in &mut out {
        s.nodes.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

/// Applies a watch event to a cached list of service versions.
pub fn apply_event(services: &mut Vec<Service>, event: &Event) {
    let ev = &event.service;
    match event.kind {
        EventKind::Create | EventKind::Update => match services.iter_mut().find(|s| s.version == ev.version) {
            Some(s) => {
                for n in &ev.nodes {
                    s.nodes.retain(|m| m.id != n.id);
                    s.nodes.push(n.clone());
                }
                s.nodes.sort_by(|a, b| a.id.cmp(&b.id));
            }
            None => services.push(ev.clone()),
        },
        EventKind::Delete => {
            for s in services.iter_mut().filter(|s| s.version == ev.version) {
                s.nodes.retain(|m| !ev.nodes.iter().any(|n| n.id == m.id));
            }
            services.retain(|s| !s.nodes.is_empty());
        }
    }
}

/// The registry's not-found error, as go-micro's `ErrNotFound`.
pub(crate) fn not_found(name: &str) -> micro_core::Error {
    micro_core::Error::not_found("go.micro.registry", format!("service {name}: not found"))
}
