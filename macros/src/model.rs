//! Syntax → model: what the registry is made of, independent of tokens.
//! Building the model judges nothing (`validate` does, before and after);
//! where the syntax holds more than the model can (a second
//! `#[replicas(..)]`, a reserved field name), the model keeps the first or
//! leaves it out.

use proc_macro2::Span;
use syn::{Attribute, Fields, Ident, ItemStruct, Path, Type, Visibility};

use crate::parse::{self, StageAttrs};

/// Which macro is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Registry,
    Pipeline,
}

impl Kind {
    pub(crate) fn macro_name(self) -> &'static str {
        match self {
            Kind::Registry => "make_registry",
            Kind::Pipeline => "pipeline",
        }
    }

    /// What its entries are called.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Kind::Registry => "server",
            Kind::Pipeline => "stage",
        }
    }
}

/// A registry: the user's struct and its servers.
pub(crate) struct Registry {
    pub(crate) kind: Kind,
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    /// The user's named fields (none for a unit struct).
    pub(crate) fields: Vec<UserField>,
    pub(crate) servers: Vec<Server>,
    /// Where to point errors about the registry as a whole.
    pub(crate) span: Span,
}

pub(crate) struct UserField {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

pub(crate) struct Server {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
    /// `#[replicas(..)]`, pipeline stages only.
    pub(crate) replicas: Replicas,
    /// `#[fused]`: runs in the task of the stage before it.
    pub(crate) fused: bool,
    /// `#[max_demand(..)]`, pipeline stages only.
    pub(crate) max_demand: Option<Count>,
    /// `#[rate_limit(n, per = ..)]`, pipeline stages only: the count and
    /// the interval's expression.
    pub(crate) rate_limit: Option<(Count, syn::Expr)>,
    /// `#[batch(size = .., timeout = ..)]`, pipeline stages only: the size,
    /// the timeout's expression, and the attribute (for spans).
    pub(crate) batch: Option<Batch>,
    /// `#[concurrency(n, ordered?)]`, pipeline stages only.
    pub(crate) concurrency: Option<(Count, bool)>,
}

/// A stage's `#[batch(..)]`.
pub(crate) struct Batch {
    pub(crate) size: Count,
    pub(crate) timeout: syn::Expr,
}

/// How a stage is replicated by default (a builder may change the count).
pub(crate) struct Replicas {
    pub(crate) count: Count,
    pub(crate) partition_by: Option<Path>,
    pub(crate) ordered: Option<Span>,
}

/// The declared replica count.
pub(crate) enum Count {
    Lit(usize),
    /// The path of a `const usize`, checked to be at least 1 when compiled.
    Const(Path),
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { count: Count::Lit(1), partition_by: None, ordered: None }
    }
}

/// Builds the model from syntax that `validate::syntax` has checked.
pub(crate) fn build(kind: Kind, args: parse::Args, stage_attrs: Vec<StageAttrs>, item: ItemStruct) -> Registry {
    let fields = match item.fields {
        Fields::Named(named) => named
            .named
            .into_iter()
            .filter_map(|f| {
                let ident = f.ident?;
                Some(UserField { attrs: f.attrs, vis: f.vis, ident, ty: f.ty })
            })
            .filter(|f| !f.ident.to_string().starts_with("__genflow"))
            .collect(),
        Fields::Unit | Fields::Unnamed(_) => Vec::new(),
    };
    let mut stage_attrs = stage_attrs.into_iter();
    let servers = args
        .entries
        .into_iter()
        .map(|entry| {
            let (replicas, fused, max_demand, rate_limit, batch, concurrency) = match (kind, stage_attrs.next()) {
                (Kind::Pipeline, Some(mut attrs)) => {
                    let fused = !attrs.fused.is_empty();
                    let max_demand =
                        std::mem::take(&mut attrs.max_demand).into_iter().next().map(|(_, count)| match count {
                            parse::Count::Lit(lit) => Count::Lit(lit.base10_parse().unwrap_or(1).max(1)),
                            parse::Count::Const(path) => Count::Const(path),
                        });
                    let rate_limit = std::mem::take(&mut attrs.rate_limit).into_iter().next().and_then(|rate| {
                        let count = match rate.count {
                            parse::Count::Lit(lit) => Count::Lit(lit.base10_parse().unwrap_or(1).max(1)),
                            parse::Count::Const(path) => Count::Const(path),
                        };
                        rate.per.map(|per| (count, per))
                    });
                    let batch = std::mem::take(&mut attrs.batch).into_iter().next().and_then(|batch| {
                        let size = match batch.size? {
                            parse::Count::Lit(lit) => Count::Lit(lit.base10_parse().unwrap_or(1).max(1)),
                            parse::Count::Const(path) => Count::Const(path),
                        };
                        Some(Batch { size, timeout: batch.timeout? })
                    });
                    let concurrency = std::mem::take(&mut attrs.concurrency).into_iter().next().map(|c| {
                        let count = match c.count {
                            parse::Count::Lit(lit) => Count::Lit(lit.base10_parse().unwrap_or(1).max(1)),
                            parse::Count::Const(path) => Count::Const(path),
                        };
                        (count, c.ordered)
                    });
                    (replicas(attrs), fused, max_demand, rate_limit, batch, concurrency)
                }
                _ => (Replicas::default(), false, None, None, None, None),
            };
            Server { name: entry.name, ty: entry.ty, replicas, fused, max_demand, rate_limit, batch, concurrency }
        })
        .collect();
    Registry { kind, attrs: item.attrs, vis: item.vis, span: item.ident.span(), ident: item.ident, fields, servers }
}

/// The first `#[replicas(..)]` of a stage, its first value of each option.
fn replicas(attrs: StageAttrs) -> Replicas {
    let mut replicas = Replicas::default();
    let Some(attr) = attrs.replicas.into_iter().next() else { return replicas };
    replicas.count = match attr.count {
        Some(parse::Count::Lit(lit)) => Count::Lit(lit.base10_parse().unwrap_or(1).max(1)),
        Some(parse::Count::Const(path)) => Count::Const(path),
        None => Count::Lit(1),
    };
    for option in attr.options {
        match option {
            parse::ReplicaOption::PartitionBy(_, Some(path)) if replicas.partition_by.is_none() => {
                replicas.partition_by = Some(path)
            }
            parse::ReplicaOption::Ordered(span) if replicas.ordered.is_none() => replicas.ordered = Some(span),
            _ => {}
        }
    }
    replicas
}
