//! Syntax → model: what the registry is made of, independent of tokens.

use proc_macro2::Span;
use syn::{
    Attribute, Fields, Ident, ItemStruct, LitInt, Path, Token, Type, Visibility, parse::ParseStream,
    punctuated::Punctuated,
};

use crate::{errors::Errors, parse};

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
}

/// How a stage is replicated.
pub(crate) struct Replicas {
    pub(crate) count: usize,
    /// Where the count was written, if it was.
    pub(crate) count_span: Option<Span>,
    pub(crate) partition_by: Option<Path>,
    pub(crate) ordered: Option<Span>,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { count: 1, count_span: None, partition_by: None, ordered: None }
    }
}

/// Builds the model, reporting what cannot be represented in `errors`.
pub(crate) fn build(kind: Kind, args: parse::Args, item: ItemStruct, errors: &mut Errors) -> Registry {
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
    let fields = match item.fields {
        Fields::Named(named) => named
            .named
            .into_iter()
            .filter_map(|f| {
                let ident = f.ident.expect("named fields have names");
                if ident.to_string().starts_with("__genflow") {
                    errors.at(&ident, "field names starting with `__genflow` are reserved for the generated code");
                    return None;
                }
                Some(UserField { attrs: f.attrs, vis: f.vis, ident, ty: f.ty })
            })
            .collect(),
        Fields::Unit => Vec::new(),
        Fields::Unnamed(unnamed) => {
            errors.at(
                &unnamed,
                format_args!(
                    "a `{macro_name}` struct cannot be a tuple struct: use a unit struct `struct {};` \
                     or named fields `struct {} {{ field: Type }}`",
                    item.ident, item.ident
                ),
            );
            Vec::new()
        }
    };
    let servers = args
        .entries
        .into_iter()
        .map(|entry| {
            let replicas = match kind {
                Kind::Registry => {
                    for attr in &entry.attrs {
                        errors.at(
                            attr,
                            "attributes on entries (such as `#[replicas(..)]`) are only for `#[pipeline]` stages",
                        );
                    }
                    Replicas::default()
                }
                Kind::Pipeline => stage_attrs(&entry.attrs, errors),
            };
            Server { name: entry.name, ty: entry.ty, replicas }
        })
        .collect();
    Registry { kind, attrs: item.attrs, vis: item.vis, span: item.ident.span(), ident: item.ident, fields, servers }
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

mod kw {
    syn::custom_keyword!(replicas);
    syn::custom_keyword!(partition_by);
    syn::custom_keyword!(ordered);
}

const REPLICA_OPTIONS: &str =
    "expected one of: a replica count such as `4`, `partition_by = path::to::key_fn`, `ordered`";

/// Reads the attributes of one pipeline stage: at most one `#[replicas(..)]`.
fn stage_attrs(attrs: &[Attribute], errors: &mut Errors) -> Replicas {
    let mut replicas = Replicas::default();
    let mut seen: Option<&Attribute> = None;
    for attr in attrs {
        if !attr.path().is_ident("replicas") {
            errors.at(attr.path(), "unknown stage attribute; the only one is `#[replicas(..)]`");
            continue;
        }
        if seen.is_some() {
            errors.at(attr, "duplicate `#[replicas(..)]`: give all options in one attribute");
            continue;
        }
        seen = Some(attr);
        match attr.parse_args_with(|input: ParseStream<'_>| parse_replicas(input, errors)) {
            Ok(parsed) if parsed.count_span.is_none() => {
                errors.at(attr, "`#[replicas(..)]` needs a replica count first, such as `#[replicas(4)]`")
            }
            Ok(parsed) => replicas = parsed,
            Err(error) => errors.push(error),
        }
    }
    replicas
}

fn parse_replicas(input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<Replicas> {
    let mut replicas = Replicas::default();
    if input.is_empty() {
        return Ok(replicas);
    }
    if input.peek(LitInt) {
        let lit: LitInt = input.parse()?;
        match lit.base10_parse::<usize>() {
            Ok(0) => errors.at(&lit, "a stage needs at least one replica: use `#[replicas(1)]` or more"),
            Ok(n) => replicas.count = n,
            Err(_) => errors.at(&lit, "the replica count must be a positive integer"),
        }
        replicas.count_span = Some(lit.span());
        if input.is_empty() {
            return Ok(replicas);
        }
        input.parse::<Token![,]>()?;
    }
    let options = Punctuated::<ReplicaOption, Token![,]>::parse_terminated(input)?;
    for option in options {
        match option {
            ReplicaOption::Count(lit) => {
                errors.at(&lit, "the replica count goes first, and only once: `#[replicas(4, ..)]`")
            }
            ReplicaOption::PartitionBy(key, path) => match (&replicas.partition_by, path) {
                (Some(_), _) => errors.at(key, "duplicate `partition_by`"),
                (None, Some(path)) => replicas.partition_by = Some(path),
                (None, None) => errors.at(
                    key,
                    "`partition_by` needs the path of a key function: `partition_by = Item::key`, \
                     where `fn key(&Item) -> K` and `K: Hash`",
                ),
            },
            ReplicaOption::Ordered(span) => match replicas.ordered {
                Some(_) => errors.push(syn::Error::new(span, "duplicate `ordered`")),
                None => replicas.ordered = Some(span),
            },
        }
    }
    Ok(replicas)
}

enum ReplicaOption {
    Count(LitInt),
    PartitionBy(kw::partition_by, Option<Path>),
    Ordered(Span),
}

impl syn::parse::Parse for ReplicaOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitInt) {
            return Ok(ReplicaOption::Count(input.parse()?));
        }
        if input.peek(kw::partition_by) {
            let key: kw::partition_by = input.parse()?;
            if !input.peek(Token![=]) {
                return Ok(ReplicaOption::PartitionBy(key, None));
            }
            input.parse::<Token![=]>()?;
            if input.is_empty() || input.peek(Token![,]) {
                return Ok(ReplicaOption::PartitionBy(key, None));
            }
            let path: Path = input
                .parse()
                .map_err(|e| syn::Error::new(e.span(), "expected the path of a key function, such as `Item::key`"))?;
            return Ok(ReplicaOption::PartitionBy(key, Some(path)));
        }
        if input.peek(kw::ordered) {
            let ordered: kw::ordered = input.parse()?;
            return Ok(ReplicaOption::Ordered(ordered.span));
        }
        let unknown: proc_macro2::TokenTree = input.parse()?;
        Err(syn::Error::new(unknown.span(), format_args!("unknown replicas option `{unknown}`; {REPLICA_OPTIONS}")))
    }
}
