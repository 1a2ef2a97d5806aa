//! Syntax → model: what the registry is made of, independent of tokens.

use proc_macro2::Span;
use syn::{Attribute, Fields, Ident, ItemStruct, Type, Visibility};

use crate::{errors::Errors, parse};

/// Which macro is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Registry,
}

impl Kind {
    pub(crate) fn macro_name(self) -> &'static str {
        match self {
            Kind::Registry => "make_registry",
        }
    }
}

/// A registry: the user's struct and its servers.
pub(crate) struct Registry {
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
                    errors.at(
                        &ident,
                        "field names starting with `__genflow` are reserved for the generated code",
                    );
                    return None;
                }
                Some(UserField {
                    attrs: f.attrs,
                    vis: f.vis,
                    ident,
                    ty: f.ty,
                })
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
            for attr in &entry.attrs {
                errors.at(
                    attr,
                    "attributes on entries (such as `#[replicas(..)]`) are only for `#[pipeline]` stages",
                );
            }
            Server {
                name: entry.name,
                ty: entry.ty,
            }
        })
        .collect();
    Registry {
        attrs: item.attrs,
        vis: item.vis,
        span: item.ident.span(),
        ident: item.ident,
        fields,
        servers,
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
