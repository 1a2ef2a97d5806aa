//! `#[stage]` on `impl Stage for X { .. }`: the `GenServer` items written in
//! the block move to their own impl, and the missing ones are filled in.
//!
//! Filled in: `type Message = ()`, `type Response = ()`, `fn new` through
//! `Default`, and a no-op `handle_call` when `Response` is `()` (left out).
//! `handle_cast`, `init`, `terminate`, `channel_queue_size` and
//! `restart_limit` keep the trait's defaults. `type Registry` is required:
//! a stateful stage belongs to one pipeline (a stage for any pipeline is a
//! function, or a hand-written generic impl).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{ImplItem, ItemImpl, spanned::Spanned};

use super::with_error;

/// The items of `GenServer`, which the block may hold.
const SERVER_ITEMS: &[&str] = &[
    "Message",
    "Response",
    "Registry",
    "new",
    "handle_call",
    "handle_cast",
    "init",
    "terminate",
    "channel_queue_size",
    "restart_limit",
];

const NOT_STAGE: &str = "`#[genflow::stage]` goes on an `impl Stage for Type` block (or on a function)";

fn item_name(item: &ImplItem) -> Option<String> {
    match item {
        ImplItem::Type(ty) => Some(ty.ident.to_string()),
        ImplItem::Fn(function) => Some(function.sig.ident.to_string()),
        _ => None,
    }
}

pub(super) fn expand(mut block: ItemImpl) -> TokenStream {
    let is_stage = matches!(
        &block.trait_,
        Some((None, path, _)) if path.segments.last().is_some_and(|s| s.ident == "Stage")
    );
    if !is_stage {
        let error = match &block.trait_ {
            Some((_, path, _)) => syn::Error::new_spanned(path, NOT_STAGE),
            None => syn::Error::new_spanned(&block.self_ty, NOT_STAGE),
        };
        return with_error(quote!(#block), error);
    }
    let (server, stage): (Vec<ImplItem>, Vec<ImplItem>) = std::mem::take(&mut block.items)
        .into_iter()
        .partition(|item| item_name(item).is_some_and(|name| SERVER_ITEMS.contains(&name.as_str())));
    block.items = stage;
    let has = |name: &str| server.iter().any(|item| item_name(item).as_deref() == Some(name));

    let mut errors: Vec<syn::Error> = Vec::new();
    let mut fill = Vec::new();
    let self_ty = &block.self_ty;
    let span = self_ty.span();
    if !has("Registry") {
        errors.push(syn::Error::new(
            span,
            "a stage declared with `#[genflow::stage]` names its pipeline: add \
             `type Registry = YourPipeline;` to this block (a stage for any pipeline is a \
             `#[genflow::stage]` function)",
        ));
        // A stand-in every pipeline accepts without an error of its own.
        fill.push(quote_spanned!(span=> type Registry = ::genflow::__private::Unknown;));
    }
    if !has("Message") {
        fill.push(quote_spanned!(span=> type Message = ();));
    }
    if !has("Response") {
        fill.push(quote_spanned!(span=> type Response = ();));
    }
    if !has("new") {
        fill.push(quote_spanned! {span=>
            fn new(_: <Self as ::genflow::GenServer>::Registry) -> Self {
                <Self as ::core::default::Default>::default()
            }
        });
    }
    if !has("handle_call") {
        if let Some(response) = server.iter().find(|item| item_name(item).as_deref() == Some("Response")) {
            errors.push(syn::Error::new_spanned(
                response,
                "this stage declares a `Response`, so it answers calls: add \
                 `async fn handle_call(&mut self, message: Self::Message) -> Self::Response`, or remove \
                 `type Response` to take no calls",
            ));
            fill.push(quote_spanned! {span=>
                async fn handle_call(&mut self, _: Self::Message) -> Self::Response {
                    ::core::unreachable!()
                }
            });
        } else {
            fill.push(quote_spanned! {span=>
                async fn handle_call(&mut self, _: Self::Message) {}
            });
        }
    }
    let (impl_generics, _, where_clause) = block.generics.split_for_impl();
    let attrs = block.attrs.iter().filter(|attr| attr.path().is_ident("doc") || attr.path().is_ident("cfg"));
    let server_impl = quote_spanned! {span=>
        #(#attrs)*
        impl #impl_generics ::genflow::GenServer for #self_ty #where_clause {
            #(#server)*
            #(#fill)*
        }
    };
    let mut tokens = quote!(#block #server_impl);
    for error in errors {
        tokens.extend(error.to_compile_error());
    }
    tokens
}
