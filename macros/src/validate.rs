//! Checks over the whole model: names and counts.

use std::collections::HashMap;

use crate::{
    errors::Errors,
    model::{Kind, Registry},
};

pub(crate) fn check(registry: &Registry, errors: &mut Errors) {
    // A registry without servers is a plain `Clone` struct with `start`,
    // `shutdown` and `abort` (genserver accepted it); a pipeline without
    // stages would have no input or output type.
    if registry.kind == Kind::Pipeline && registry.servers.is_empty() {
        errors.push(syn::Error::new(
            registry.span,
            "a pipeline needs at least one stage: `#[pipeline{ first: First, second: Second }]`",
        ));
    }
    for server in &registry.servers {
        if let (Some(ordered), Some(path)) = (server.replicas.ordered, &server.replicas.partition_by) {
            let mut error = syn::Error::new(
                ordered,
                "`ordered` and `partition_by` cannot be combined: `partition_by` already keeps the order of \
                 each key; remove one of them",
            );
            error.combine(syn::Error::new_spanned(path, "`partition_by` is given here"));
            errors.push(error);
        }
    }
    // `call_x_all` of a stage `x` must not be the `call_` method of a stage `x_all`.
    if registry.kind == Kind::Pipeline {
        let names: HashMap<String, _> = registry.servers.iter().map(|s| (s.name.to_string(), &s.name)).collect();
        for server in &registry.servers {
            let name = server.name.to_string();
            if let Some(base) = name.strip_suffix("_all") {
                if let Some(other) = names.get(base) {
                    errors.at(
                        &server.name,
                        format_args!(
                            "a stage named `{name}` clashes with the `call_{base}_all` method of stage `{other}`; \
                             rename one of them"
                        ),
                    );
                }
            }
        }
    }
    let noun = match registry.kind {
        Kind::Registry => "server",
        Kind::Pipeline => "stage",
    };
    let mut seen = HashMap::new();
    for server in &registry.servers {
        let name = server.name.to_string();
        if let Some(first) = seen.insert(name.clone(), &server.name) {
            let mut error = syn::Error::new(
                server.name.span(),
                format_args!("duplicate {noun} name `{name}`: each {noun} needs its own name"),
            );
            error.combine(syn::Error::new(first.span(), format_args!("`{name}` is first declared here")));
            errors.push(error);
        }
    }
}
