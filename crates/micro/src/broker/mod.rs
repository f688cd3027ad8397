//! Built-in brokers.

pub mod http;
mod memory;

pub use http::HttpBroker;
pub use memory::MemoryBroker;

/// Who gets a published message: every subscriber outside a queue group,
/// and one member, chosen at random, of each queue group.
pub(crate) fn recipients<T>(subscribers: impl IntoIterator<Item = (Option<String>, T)>) -> Vec<T> {
    use rand::Rng;
    let mut out = Vec::new();
    let mut groups: std::collections::BTreeMap<String, Vec<T>> = std::collections::BTreeMap::new();
    for (queue, s) in subscribers {
        match queue {
            None => out.push(s),
            Some(q) => groups.entry(q).or_default().push(s),
        }
    }
    let mut rng = rand::rng();
    for mut members in groups.into_values() {
        let i = rng.random_range(0..members.len());
        out.push(members.swap_remove(i));
    }
    out
}
