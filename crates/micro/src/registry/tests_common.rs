//! Helpers of the registries' tests (the contract every registry meets is
//! `micro_testkit::contract::registry`).

use micro_core::{Node, Service};

pub(crate) fn svc(name: &str, id: &str, addr: &str) -> Service {
    Service {
        name: name.into(),
        version: "1.0.0".into(),
        nodes: vec![Node { id: id.into(), address: addr.into(), ..Default::default() }],
        ..Default::default()
    }
}
