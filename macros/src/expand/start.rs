//! The `start` skeleton both macros share, and what builds on it: the
//! registry's `start`, its `builder`, and the hidden `Configurable` impl
//! that lets `genflow::Builder` start it with chosen sizes.
//!
//! One private function holds the whole start (make the queues, build the
//! core, spawn, wait for every `init`); `start` calls it with the declared
//! sizes, a builder with its own.

use proc_macro2::{Ident, TokenStream};
use quote::quote;

use super::local::{self, StartLocals};
use crate::model::{Kind, Registry};

/// The parts of a start that differ between registries and pipelines.
pub(super) struct Parts {
    /// Statements making the queues with `locals.builder`, reading
    /// `sizes()` for the chosen sizes.
    pub(super) prepare: TokenStream,
    /// The tuple of handles the core holds.
    pub(super) handles: TokenStream,
    /// Statements spawning the servers, from `locals.registry` into
    /// `locals.start`.
    pub(super) spawns: TokenStream,
    /// The rustdoc of `start`.
    pub(super) doc: String,
}

/// The local holding the chosen `Sizes` inside the skeleton.
pub(super) fn sizes() -> Ident {
    local::local("__sizes")
}

fn function() -> Ident {
    local::local("__genflow_start")
}

/// Items for the inside of the registry's `const _` block: the skeleton
/// function and the `Configurable` (and, for pipelines, `Replicated`) impl.
pub(super) fn items(registry: &Registry, parts: &Parts) -> TokenStream {
    let Registry { ident, fields, servers, kind, .. } = registry;
    let StartLocals { builder, core, registry: this, start } = &StartLocals::new();
    let (sizes, function) = (sizes(), function());
    let field_names: Vec<_> = fields.iter().map(|f| &f.ident).collect();
    let field_types: Vec<_> = fields.iter().map(|f| &f.ty).collect();
    let Parts { prepare, handles, spawns, .. } = parts;
    let noun = kind.noun();
    let names = servers.iter().map(|s| s.name.to_string());
    let fused: Vec<_> = servers.iter().filter(|s| s.fused).map(|s| s.name.to_string()).collect();
    let fused = (!fused.is_empty()).then(|| quote!(const FUSED: &'static [&'static str] = &[#(#fused),*];));
    let batched: Vec<_> = servers.iter().filter(|s| s.batch.is_some()).map(|s| s.name.to_string()).collect();
    let batched = (!batched.is_empty()).then(|| quote!(const BATCHED: &'static [&'static str] = &[#(#batched),*];));
    let fields_local = local::local("__fields");
    let bounds = super::registry::bounds(registry);
    let replicated = (*kind == Kind::Pipeline).then(|| {
        quote! {
            #[automatically_derived]
            impl ::genflow::__private::Replicated for #ident where #bounds {}
        }
    });
    quote! {
        async fn #function(
            #(#field_names: #field_types,)*
            #sizes: &::genflow::__private::Sizes,
        ) -> #ident
        where
            #bounds
        {
            let mut #builder = ::genflow::__private::Builder::new();
            #prepare
            let #core = ::genflow::__private::Core::new(#builder, #handles);
            let #this = #ident { #(#field_names,)* __genflow: #core };
            let mut #start = ::genflow::__private::Start::new();
            #spawns
            #start.wait().await;
            let #ident { #(#field_names,)* __genflow: #core } = #this;
            #ident { #(#field_names,)* __genflow: #core.into_outside() }
        }

        #[automatically_derived]
        impl ::genflow::__private::Configurable for #ident where #bounds {
            type Fields = (#(#field_types,)*);
            const KIND: &'static str = #noun;
            const NAMES: &'static [&'static str] = &[#(#names),*];
            #fused
            #batched

            fn start_sized(
                #fields_local: Self::Fields,
                #sizes: ::genflow::__private::Sizes,
            ) -> impl ::core::future::Future<Output = Self> {
                async move {
                    let (#(#field_names,)*) = #fields_local;
                    #function(#(#field_names,)* &#sizes).await
                }
            }
        }

        #replicated
    }
}

/// `start` and `builder`, for the registry's inherent impl.
pub(super) fn methods(registry: &Registry, parts: &Parts) -> TokenStream {
    let Registry { vis, fields, servers, kind, .. } = registry;
    let function = function();
    let field_names: Vec<_> = fields.iter().map(|f| &f.ident).collect();
    let field_types: Vec<_> = fields.iter().map(|f| &f.ty).collect();
    let doc = &parts.doc;
    let noun = kind.noun();
    let names = servers.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
    let settings = match kind {
        Kind::Registry => "`queue_size(server, n)`",
        Kind::Pipeline => "`replicas(stage, n)` and `queue_size(stage, n)`",
    };
    let builder_doc = format!(
        "A `genflow::Builder` that starts this {} as `start` does, with sizes chosen at run time: \
         {settings}, by name ({}). What is not set keeps its declared default.\n\n\
         Takes the same arguments as `start`. Nothing is checked or started until `start().await` on the \
         builder, which returns a `genflow::ConfigError` (and starts nothing) if a setting names an unknown \
         {noun} or is 0.",
        match kind {
            Kind::Registry => "registry",
            Kind::Pipeline => "pipeline",
        },
        if names.is_empty() { "it has none".to_owned() } else { format!("{noun}s {names}") },
    );
    quote! {
        #[doc = #doc]
        #vis async fn start(#(#field_names: #field_types),*) -> Self {
            #function(#(#field_names,)* &::genflow::__private::Sizes::default()).await
        }

        #[doc = #builder_doc]
        #[must_use = "a builder does nothing until `start().await`"]
        #vis fn builder(#(#field_names: #field_types),*) -> ::genflow::Builder<Self> {
            ::genflow::Builder::new((#(#field_names,)*))
        }
    }
}
