//! Checks over the whole model: names and counts.

use std::collections::HashMap;

use crate::{errors::Errors, model::Registry};

pub(crate) fn check(registry: &Registry, errors: &mut Errors) {
    if registry.servers.is_empty() {
        errors.push(syn::Error::new(
            registry.span,
            "a registry needs at least one server: `#[make_registry{ name: Type }]`",
        ));
    }
    let mut seen = HashMap::new();
    for server in &registry.servers {
        let name = server.name.to_string();
        if let Some(first) = seen.insert(name.clone(), &server.name) {
            let mut error = syn::Error::new(
                server.name.span(),
                format_args!("duplicate server name `{name}`: each server needs its own name"),
            );
            error.combine(syn::Error::new(
                first.span(),
                format_args!("`{name}` is first declared here"),
            ));
            errors.push(error);
        }
    }
}
