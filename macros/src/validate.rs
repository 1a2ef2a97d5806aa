//! Every check, in two passes (serde_derive's `internals/check.rs` in
//! spirit): `syntax` judges what `parse` read (the struct's shape, the stage
//! attributes), `check` judges the model as a whole (names, combinations).
//! Each error is pushed to [`Errors`]; none stops the others.

use std::collections::HashMap;

use syn::{Attribute, Fields, ItemStruct};

use crate::{
    errors::Errors,
    model::{Kind, Registry},
    parse::{self, Count, ReplicaOption, StageAttrs},
};

/// The most replicas a stage can have: `genflow::MAX_REPLICAS`, which the
/// expansion of a `const` count is checked against.
pub(crate) const MAX_REPLICAS: usize = 65_536;

/// Checks the struct and the entries' attributes.
pub(crate) fn syntax(kind: Kind, item: &ItemStruct, args: &parse::Args, stages: &[StageAttrs], errors: &mut Errors) {
    let macro_name = kind.macro_name();
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.at(
            &item.generics,
            format_args!(
                "a `{macro_name}` struct cannot be generic; put generic server types in the list instead, \
                 such as `worker: Worker<u8>`"
            ),
        );
    }
    for attr in &item.attrs {
        if derives_clone(attr) {
            errors.at(
                attr,
                format_args!("remove `Clone` from this derive: `{macro_name}` implements `Clone` for the registry"),
            );
        }
    }
    match &item.fields {
        Fields::Named(named) => {
            for ident in named.named.iter().filter_map(|f| f.ident.as_ref()) {
                if ident.to_string().starts_with("__genflow") {
                    errors.at(ident, "field names starting with `__genflow` are reserved for the generated code");
                }
            }
        }
        Fields::Unit => {}
        Fields::Unnamed(unnamed) => errors.at(
            unnamed,
            format_args!(
                "a `{macro_name}` struct cannot be a tuple struct: use a unit struct `struct {};` \
                 or named fields `struct {} {{ field: Type }}`",
                item.ident, item.ident
            ),
        ),
    }
    if kind == Kind::Registry {
        for attr in args.entries.iter().flat_map(|entry| &entry.attrs) {
            errors.at(attr, "attributes on entries (such as `#[replicas(..)]`) are only for `#[pipeline]` stages");
        }
    }
    for stage in stages {
        stage_attrs(stage, errors);
    }
    fusion(args, stages, errors);
}

/// `#[fused]` is written bare, once, not on the first stage, and the stage
/// and the one before it have one replica and no `ordered`. One error per
/// attribute at fault, at the part to change.
fn fusion(args: &parse::Args, stages: &[StageAttrs], errors: &mut Errors) {
    let names: Vec<_> = args.entries.iter().map(|entry| &entry.name).collect();
    for (i, stage) in stages.iter().enumerate() {
        for (k, attr) in stage.fused.iter().enumerate() {
            if k > 0 {
                errors.at(attr, "duplicate `#[fused]`");
            } else if !matches!(attr.meta, syn::Meta::Path(_)) {
                errors.at(&attr.meta, "`#[fused]` takes no arguments");
            }
        }
        let Some(fused) = stage.fused.first() else { continue };
        let Some(name) = names.get(i) else { continue };
        if i == 0 {
            errors.at(
                fused,
                format_args!(
                    "the first stage `{name}` cannot be `#[fused]`: a fused stage runs in the task of the stage \
                     before it; remove `#[fused]` here"
                ),
            );
            continue;
        }
        let previous = names[i - 1];
        for (j, whose) in [(i - 1, "the stage before it"), (i, "the fused stage")] {
            let Some(replicas) = stages[j].replicas.first() else { continue };
            let stage_name = names[j];
            match &replicas.count {
                Some(Count::Lit(lit)) if lit.base10_parse::<usize>().is_ok_and(|n| n > 1) => errors.at(
                    lit,
                    format_args!(
                        "`{name}` is `#[fused]` into `{previous}`: both run in one task, so {whose}, \
                         `{stage_name}`, needs one replica; remove `#[replicas({lit})]` or `#[fused]`"
                    ),
                ),
                Some(Count::Const(path)) => errors.at(
                    path,
                    format_args!(
                        "`{name}` is `#[fused]` into `{previous}`: both run in one task, so {whose}, \
                         `{stage_name}`, needs one replica; a const count cannot be checked here, remove it \
                         or `#[fused]`"
                    ),
                ),
                _ => {}
            }
            for option in &replicas.options {
                if let ReplicaOption::Ordered(span) = option {
                    errors.push(syn::Error::new(
                        *span,
                        format!(
                            "`{name}` is `#[fused]` into `{previous}`: `ordered` on {whose}, `{stage_name}`, has \
                             nothing to reorder with one replica; remove `ordered` or `#[fused]`"
                        ),
                    ));
                }
            }
        }
    }
}

fn derives_clone(attr: &Attribute) -> bool {
    if !attr.path().is_ident("derive") {
        return false;
    }
    let mut clone = false;
    let _ = attr.parse_nested_meta(|meta| {
        if meta.path.segments.last().is_some_and(|s| s.ident == "Clone") {
            clone = true;
        }
        Ok(())
    });
    clone
}

/// At most one `#[replicas(..)]`, with a count first, once, and each option
/// at most once.
fn stage_attrs(stage: &StageAttrs, errors: &mut Errors) {
    for path in &stage.unknown {
        errors.at(
            path,
            "unknown stage attribute; the stage attributes are `#[replicas(..)]`, `#[max_demand(..)]`, \
             `#[rate_limit(..)]`, `#[concurrency(..)]`, `#[batch(..)]` and `#[fused]`",
        );
    }
    for (i, batch) in stage.batch.iter().enumerate() {
        if i > 0 {
            errors.at(&batch.attr, "duplicate `#[batch(..)]`");
            continue;
        }
        match &batch.size {
            Some(Count::Lit(lit)) => match lit.base10_parse::<usize>() {
                Ok(0) => errors.at(lit, "a batch holds at least one item: use `size = 1` or more"),
                Ok(_) => {}
                Err(_) => errors.at(lit, "the batch size must be a positive integer"),
            },
            Some(Count::Const(_)) => {}
            None => errors.at(
                &batch.attr,
                "`#[batch(..)]` needs its size: `#[batch(size = 100, timeout = Duration::from_millis(50))]`",
            ),
        }
        if batch.timeout.is_none() {
            errors.at(
                &batch.attr,
                "`#[batch(..)]` needs its timeout: `#[batch(size = 100, timeout = Duration::from_millis(50))]`",
            );
        }
        if let Some(fused) = stage.fused.first() {
            errors.at(
                fused,
                "a `#[batch(..)]` stage cannot be `#[fused]`: it waits for its batches to fill, which would hold \
                 up the stage whose task it runs in; remove `#[fused]` or `#[batch(..)]`",
            );
        }
        if let Some(concurrency) = stage.concurrency.first() {
            errors.at(
                &concurrency.attr,
                "a `#[batch(..)]` stage cannot have a `#[concurrency(..)]` yet: its batches are processed one at a \
                 time per replica; use `#[replicas(..)]` for batches in parallel",
            );
        }
        for attr in &stage.replicas {
            for option in &attr.options {
                if let ReplicaOption::Ordered(span) = option {
                    errors.push(syn::Error::new(
                        *span,
                        "a `#[batch(..)]` stage cannot be `ordered`: each replica cuts its own batches from the items \
                         it takes; remove `ordered` or `#[batch(..)]`",
                    ));
                }
            }
        }
    }
    for (i, rate) in stage.rate_limit.iter().enumerate() {
        if i > 0 {
            errors.at(&rate.attr, "duplicate `#[rate_limit(..)]`");
            continue;
        }
        if let Count::Lit(lit) = &rate.count {
            match lit.base10_parse::<u32>() {
                Ok(0) => errors.at(lit, "a rate limit lets at least one item through per interval"),
                Ok(_) => {}
                Err(_) => errors.at(lit, "the rate limit's count must be a positive integer that fits in a `u32`"),
            }
        }
        if rate.per.is_none() {
            errors.at(
                &rate.attr,
                "`#[rate_limit(..)]` needs its interval: `#[rate_limit(100, per = Duration::from_secs(1))]`",
            );
        }
    }
    for (i, concurrency) in stage.concurrency.iter().enumerate() {
        if i > 0 {
            errors.at(&concurrency.attr, "duplicate `#[concurrency(..)]`");
            continue;
        }
        if let Count::Lit(lit) = &concurrency.count {
            match lit.base10_parse::<usize>() {
                Ok(0) => errors.at(
                    lit,
                    "a replica has at least one item in flight: use `#[concurrency(1)]` (one at a time) or more",
                ),
                Ok(_) => {}
                Err(_) => errors.at(lit, "the concurrency must be a positive integer"),
            }
        }
    }
    for (i, (attr, count)) in stage.max_demand.iter().enumerate() {
        if i > 0 {
            errors.at(attr, "duplicate `#[max_demand(..)]`");
            continue;
        }
        if let Count::Lit(lit) = count {
            match lit.base10_parse::<usize>() {
                Ok(0) => errors.at(lit, "a replica takes at least one item at a time: use `#[max_demand(1)]` or more"),
                Ok(_) => {}
                Err(_) => errors.at(lit, "the max_demand must be a positive integer"),
            }
        }
    }
    for (i, attr) in stage.replicas.iter().enumerate() {
        if i > 0 {
            errors.at(&attr.attr, "duplicate `#[replicas(..)]`: give all options in one attribute");
            continue;
        }
        match &attr.count {
            None => errors.at(&attr.attr, "`#[replicas(..)]` needs a replica count first, such as `#[replicas(4)]`"),
            Some(Count::Lit(lit)) => match lit.base10_parse::<usize>() {
                Ok(0) => errors.at(lit, "a stage needs at least one replica: use `#[replicas(1)]` or more"),
                Ok(n) if n > MAX_REPLICAS => errors.at(
                    lit,
                    format_args!(
                        "a stage has at most {MAX_REPLICAS} replicas (`genflow::MAX_REPLICAS`): use a smaller count"
                    ),
                ),
                Ok(_) => {}
                Err(_) => errors.at(lit, "the replica count must be a positive integer"),
            },
            Some(Count::Const(_)) => {}
        }
        let (mut partition_by, mut ordered) = (false, false);
        for option in &attr.options {
            match option {
                ReplicaOption::Count(lit) => {
                    errors.at(lit, "the replica count goes first, and only once: `#[replicas(4, ..)]`")
                }
                ReplicaOption::PartitionBy(key, _) if partition_by => errors.at(key, "duplicate `partition_by`"),
                ReplicaOption::PartitionBy(key, path) => {
                    partition_by = true;
                    if path.is_none() {
                        errors.at(
                            key,
                            "`partition_by` needs the path of a key function: `partition_by = Item::key`, \
                             where `fn key(&Item) -> K` and `K: Hash`",
                        );
                    }
                }
                ReplicaOption::Ordered(span) if ordered => errors.push(syn::Error::new(*span, "duplicate `ordered`")),
                ReplicaOption::Ordered(_) => ordered = true,
            }
        }
    }
}

/// Checks the model: stage counts and names, option combinations.
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
        if let (Some(ordered), Some(_)) = (server.replicas.ordered, &server.replicas.partition_by) {
            errors.push(syn::Error::new(
                ordered,
                "`ordered` and `partition_by` cannot be combined: `partition_by` already keeps the order of \
                 each key; remove one of them",
            ));
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
    let noun = registry.kind.noun();
    let mut seen = HashMap::new();
    for (position, server) in registry.servers.iter().enumerate() {
        let name = server.name.to_string();
        if let Some(&first) = seen.get(&name) {
            // One error, at the repeated name; the message says where the
            // first one is, so nothing else needs pointing at.
            errors.push(syn::Error::new(
                server.name.span(),
                format_args!(
                    "duplicate {noun} name `{name}`: each {noun} needs its own name (`{name}` is already {noun} \
                     number {} of this list)",
                    first + 1
                ),
            ));
        } else {
            seen.insert(name, position);
        }
    }
}
