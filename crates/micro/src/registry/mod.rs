//! Built-in registries: `memory` (one process) and `local` (all processes
//! of one machine, no daemon: the zero-set-up default).

mod local;
mod memory;
#[cfg(test)]
mod tests_common;

pub use local::LocalRegistry;
pub use memory::MemoryRegistry;

use micro_core::{Event, EventKind, Service};

pub(crate) use micro_core::registry::merge_services as merge;

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
