//! The registry struct, its `Clone`, `start`, `shutdown`, `abort`, and the
//! `call_`/`cast_` methods of each server.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{
    local::{self, StartLocals},
    pipeline,
    start::{self, Parts},
};
use crate::model::{Kind, Registry, Server};

pub(crate) fn expand(registry: &Registry) -> TokenStream {
    let Registry { attrs, vis, ident, fields, servers, .. } = registry;
    let field_attrs = fields.iter().map(|f| &f.attrs);
    let field_vis = fields.iter().map(|f| &f.vis);
    let field_names: Vec<_> = fields.iter().map(|f| &f.ident).collect();
    let field_types: Vec<_> = fields.iter().map(|f| &f.ty).collect();
    let server_types: Vec<_> = servers.iter().map(|s| &s.ty).collect();
    let (handles, parts, extra, traits, shutdown_doc) = match registry.kind {
        Kind::Registry => (
            quote!((#(::genflow::__private::Handle<#server_types>,)*)),
            start(registry),
            TokenStream::new(),
            TokenStream::new(),
            "Shuts every server down gracefully: each server handles what is already in its queue, then its \
             queue closes (calls and casts get a `Closed` error from then on; nothing accepted is dropped), it \
             runs `terminate`, and its task ends. Returns once every task ended.\n\nCalled from inside one \
             of this registry's servers, it starts the shutdown and returns without waiting for it.",
        ),
        Kind::Pipeline => (
            pipeline::handles(registry),
            pipeline::start(registry),
            pipeline::methods(registry),
            pipeline::trait_impl(registry),
            "Shuts the pipeline down gracefully: closes the first stage's input (`send` and the sinks get \
             `Closed` errors from now on), lets every stage process what it was given, in order, serve its \
             queued calls and casts and run `terminate`, ends the output stream, and waits for every task to \
             end. Nothing accepted is dropped. Metrics stay readable afterwards.\n\nCalled from inside one \
             of the stages, it starts the shutdown and returns without waiting for it.",
        ),
    };

    // Spanned at the field's type, so a field that is not `Clone` is
    // reported there.
    let clone_fields = fields.iter().map(|f| {
        let name = &f.ident;
        let this = local::shown_at(&local::this(), f.ty.span());
        let ty = &f.ty;
        quote_spanned!(ty.span()=> #name: <#ty as ::genflow::__private::Clone>::clone(&#this.#name))
    });
    let methods = servers.iter().enumerate().map(|(i, s)| server_methods(registry, i, s));
    let (bounds, check) = (bounds(registry), check(registry));
    let (start, start_items) = (start::methods(registry, &parts), start::items(registry, &parts));

    quote! {
        #(#attrs)*
        #vis struct #ident {
            #(#(#field_attrs)* #field_vis #field_names: #field_types,)*
            #[doc(hidden)]
            __genflow: ::genflow::__private::Core<#ident>,
        }

        const _: () = {
            #check

            #[automatically_derived]
            impl ::genflow::__private::Parts for #ident where #bounds {
                type Servers = #handles;
            }

            #[automatically_derived]
            impl ::genflow::__private::Clone for #ident {
                fn clone(&self) -> Self {
                    Self {
                        #(#clone_fields,)*
                        __genflow: ::genflow::__private::Clone::clone(&self.__genflow),
                    }
                }
            }

            // Generated methods a program does not use are not dead code
            // to warn about.
            #[allow(dead_code)]
            impl #ident where #bounds {
                #start

                #(#methods)*

                #extra

                #[doc = #shutdown_doc]
                #vis async fn shutdown(&self) {
                    self.__genflow.shutdown().await
                }

                /// Stops every server at its next `.await`, without handling
                /// what is queued and without running `terminate`. Queued
                /// calls get their messages back in `Closed` errors. Does not
                /// wait.
                #vis fn abort(&self) {
                    self.__genflow.abort()
                }
            }

            #traits

            #start_items
        };
    }
}

/// The trait of every entry's type, `GenServer` or `Stage`.
fn entry_trait(registry: &Registry) -> TokenStream {
    match registry.kind {
        Kind::Registry => quote!(::genflow::__private::GenServer),
        Kind::Pipeline => quote!(::genflow::__private::Stage),
    }
}

/// `for<'__genflow> Entry: GenServer<Registry = Self>` (for a pipeline,
/// `Entry: Stage`) for every entry: the where-clause of everything
/// generated that needs the entries to be servers. Higher-ranked, so it is
/// assumed where it is written rather than checked there: an entry that is
/// not a server is reported once, by `check`, not again by every generated
/// item.
///
/// A pipeline's bound leaves the stage's `Registry` out: `check` proves it
/// is the pipeline (or a stand-in after a `#[genflow::stage]` error, which
/// starts nothing), and `start` passes the pipeline on through
/// `registry_as`. So a stage of another registry, or whose registry is
/// missing, is reported by `check` alone, not again at each use of `start`.
pub(super) fn bounds(registry: &Registry) -> TokenStream {
    let (entry_trait, ident) = (entry_trait(registry), &registry.ident);
    let types = registry.servers.iter().map(|s| &s.ty);
    match registry.kind {
        Kind::Registry => quote!(#(for<'__genflow> #types: #entry_trait<Registry = #ident>,)*),
        Kind::Pipeline => {
            // A first stage that is `#[batch]` takes the items of its `In`,
            // a `Vec`: checked by `check`, assumed here. (A later one takes
            // what the stage before it emits, and `start` hands it batches
            // as its `In`, which `check` proves to be their `Vec`.)
            let batched = registry.servers.iter().take(1).filter(|s| s.batch.is_some()).map(|s| {
                let ty = &s.ty;
                quote!(for<'__genflow> <#ty as ::genflow::__private::Stage>::In: ::genflow::__private::BatchOf,)
            });
            quote!(#(for<'__genflow> #types: #entry_trait,)* #(#batched)*)
        }
    }
}

/// Checks, once per distinct type, that each entry is a server (for a
/// pipeline, a stage) of this registry, spanned at the entry's type; for a
/// pipeline, also that each stage emits what the next one takes, spanned at
/// the emitting stage's type.
///
/// Both checks share one function, which assumes nothing: there, the item
/// types of an entry that is no stage are left unknown, so its links add no
/// error of their own. (Everything else generated assumes every entry is a
/// stage, and there such an entry's `Out` equals no type.)
fn check(registry: &Registry) -> TokenStream {
    let assert = match registry.kind {
        Kind::Registry => quote!(assert_server),
        Kind::Pipeline => quote!(assert_stage),
    };
    let ident = &registry.ident;
    // The first entry of each type, by type; `ends[i]` names the local
    // holding entry `i`'s item types.
    let mut first = std::collections::HashMap::new();
    let ends: Vec<_> = registry
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| *first.entry((s.ty.to_token_stream().to_string(), s.batch.is_some())).or_insert(i))
        .collect();
    let asserts = registry.servers.iter().enumerate().filter(|(i, _)| ends[*i] == *i).map(|(i, s)| {
        let ty = &s.ty;
        let local = local::shown_at(&local::numbered("__ends", i), ty.span());
        // The call is shown over the whole type, from its first token to its
        // last, as rustc shows the type argument itself: a type that is no
        // stage leaves the call's result type unknown, which rustc reports
        // at the call; at the same place and for the same trait, it is the
        // same error, reported once.
        // A `#[batch]` stage takes the items of its `Vec` batches; its
        // `In` is checked to be such a `Vec`, spanned at the attribute.
        let assert = match &s.batch {
            Some(_) => quote!(assert_batch),
            None => assert.clone(),
        };
        let call = quote_spanned!(ty.span()=> ::genflow::__private::#assert::<#ty, #ident>());
        let call = local::shown_over(call, ty);
        match registry.kind {
            Kind::Registry => quote_spanned!(ty.span()=> #call;),
            Kind::Pipeline => quote_spanned!(ty.span()=> let #local = #call;),
        }
    });
    let links = match registry.kind {
        Kind::Registry => Vec::new(),
        Kind::Pipeline => registry
            .servers
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let ty = &pair[0].ty;
                let from = local::shown_at(&local::numbered("__ends", ends[i]), ty.span());
                let to = local::shown_at(&local::numbered("__ends", ends[i + 1]), ty.span());
                let joint =
                    local::shown_over(quote_spanned!(ty.span()=> ::genflow::__private::joint(&#from, &#to)), ty);
                let call =
                    local::shown_over(quote_spanned!(ty.span()=> ::genflow::__private::assert_flows(#joint)), ty);
                quote_spanned!(ty.span()=> #call;)
            })
            .collect(),
    };
    let name = local::local("__check");
    // A pipeline is the registry of the stages whose `Registry` it is.
    let hosts = (registry.kind == Kind::Pipeline).then(|| {
        let stage = local::local("__Stage");
        quote! {
            #[automatically_derived]
            impl<#stage> ::genflow::__private::Hosts<#stage, #ident> for #ident {}
        }
    });
    quote! {
        #hosts

        #[allow(dead_code)]
        fn #name() {
            #(#asserts)*
            #(#links)*
        }
    }
}

fn start(registry: &Registry) -> Parts {
    let Registry { fields, servers, .. } = registry;
    let StartLocals { builder, registry: this, start, .. } = &StartLocals::new();
    let sizes = start::sizes();
    let field_names: Vec<_> = fields.iter().map(|f| &f.ident).collect();
    let handles: Vec<_> = (0..servers.len()).map(|i| local::numbered("__handle", i)).collect();
    let inboxes: Vec<_> = (0..servers.len()).map(|i| local::numbered("__inbox", i)).collect();
    let channels = servers.iter().enumerate().zip(&handles).zip(&inboxes).map(|(((index, s), h), i)| {
        let ty = &s.ty;
        let builder = local::shown_at(builder, ty.span());
        let name = s.name.to_string();
        quote_spanned!(ty.span()=> let (#h, #i) = #builder.channel::<#ty>(#name, #sizes.queue_size(#index));)
    });
    let spawns = servers.iter().zip(&inboxes).map(|(s, i)| {
        let ty = &s.ty;
        // Spanned at the server's type: a server whose `Registry` is another
        // type is reported there.
        let registry_arg = local::shown_at(this, ty.span());
        quote_spanned! {ty.span()=>
            #this.__genflow.spawn::<#ty>(
                &mut #start,
                #i,
                ::genflow::__private::Clone::clone(&#registry_arg),
            );
        }
    });
    let doc_params = if fields.is_empty() {
        String::new()
    } else {
        format!(
            "\n\nThe arguments become the registry's fields ({}), readable by every server through its registry.",
            field_names.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        )
    };
    let doc = if servers.is_empty() {
        format!(
            "Starts the registry. It has no servers: it holds its fields, clones, and shuts down (or aborts) \
             at once.{doc_params}\n\n# Panics\n\nPanics if called outside a Tokio runtime."
        )
    } else {
        format!(
            "Starts every server ({}) and returns once each has run `new` and `init`.{doc_params}\n\n\
             Dropping the last copy of the returned registry (copies held by the servers do not count) \
             shuts the servers down in the background, as a task of this runtime: that drain needs the \
             runtime alive until it ends. If the runtime shuts down first (or is already gone), queued \
             messages are abandoned, `terminate` does not run, and a `tracing` warning says so; \
             `shutdown().await` is how to be sure everything queued was handled.\n\n\
             To choose queue sizes at run time, use `builder`.\n\n# Panics\n\n\
             Panics if called outside a Tokio runtime, or if a server's `channel_queue_size()` is 0.",
            servers.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ")
        )
    };
    Parts { prepare: quote!(#(#channels)*), handles: quote!((#(#handles,)*)), spawns: quote!(#(#spawns)*), doc }
}

pub(super) fn server_methods(registry: &Registry, index: usize, server: &Server) -> TokenStream {
    let vis = &registry.vis;
    let ty = &server.ty;
    let name = &server.name;
    let index = syn::Index::from(index);
    let call = format_ident!("call_{}", name);
    let call_timeout = format_ident!("call_{}_with_timeout", name);
    let cast = format_ident!("cast_{}", name);
    let try_cast = format_ident!("try_cast_{}", name);
    let gs = quote_spanned!(ty.span()=> <#ty as ::genflow::__private::GenServer>);
    let message = quote!(#gs::Message);
    let response = quote!(#gs::Response);
    let (message_arg, timeout) = (local::local("message"), local::local("timeout"));
    let call_doc = format!(
        "Calls the `{name}` server and waits for its response. See `Handle::call` in the genflow docs:\n\n\
         # Errors\n\n`CallError::Closed`/`Failed` (the message comes back) if the server is not running, \
         `Panicked` if it panicked handling the message, `SelfCall` if `{name}` calls itself, `Cycle` if \
         called from a server that `{name}` already waits on (directly or through other servers).\n\n\
         # Cancel safety\n\nIf dropped before the server takes the message from its queue, the message is not handled."
    );
    let call_timeout_doc = format!(
        "Calls the `{name}` server, giving up after `timeout`, counted from now: queueing included. \
         A call that times out while still queued is never handled.\n\n# Errors\n\nAs `{call}`, \
         plus `CallError::Timeout`, which holds the message if it never entered the queue.\n\n\
         The timer runs on the runtime the registry was started on, so this works from any thread.\n\n\
         # Panics\n\nPanics if that Tokio runtime was built without timers."
    );
    let cast_doc = format!(
        "Casts a message to the `{name}` server, waiting while its queue is full.\n\n# Errors\n\n\
         `SendError::Closed`/`Failed`, holding the message, if the server is not running; `Full` if \
         `{name}` casts to itself with its queue full, `Cycle` if a server casts with the queue full and \
         `{name}` waits on that server (waiting would never end).\n\n# Cancel safety\n\n\
         If dropped before it completes, the message was not queued."
    );
    let try_cast_doc = format!(
        "Casts a message to the `{name}` server if its queue has room, without waiting.\n\n# Errors\n\n\
         `SendError::Full` if the queue is full, `Closed`/`Failed` if the server is not running; \
         each holds the message."
    );
    quote! {
        #[doc = #call_doc]
        #vis async fn #call(
            &self,
            #message_arg: #message,
        ) -> ::genflow::__private::Result<#response, ::genflow::__private::CallError<#message>> {
            self.__genflow.servers().#index.call(#message_arg).await
        }

        #[doc = #call_timeout_doc]
        #vis async fn #call_timeout(
            &self,
            #message_arg: #message,
            #timeout: ::genflow::__private::Duration,
        ) -> ::genflow::__private::Result<#response, ::genflow::__private::CallError<#message>> {
            self.__genflow.servers().#index.call_with_timeout(#message_arg, #timeout).await
        }

        #[doc = #cast_doc]
        #vis async fn #cast(
            &self,
            #message_arg: #message,
        ) -> ::genflow::__private::Result<(), ::genflow::__private::SendError<#message>> {
            self.__genflow.servers().#index.cast(#message_arg).await
        }

        #[doc = #try_cast_doc]
        #vis fn #try_cast(
            &self,
            #message_arg: #message,
        ) -> ::genflow::__private::Result<(), ::genflow::__private::SendError<#message>> {
            self.__genflow.servers().#index.try_cast(#message_arg)
        }
    }
}
