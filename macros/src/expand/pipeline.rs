//! What `pipeline` adds to a registry: stage handles and wiring in `start`,
//! `send`/`try_send`/`feed`/`sink`/`output`/`metrics`, and per stage
//! `sink_<stage>`, `call_<stage>_all`, `cast_<stage>_all`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Index, spanned::Spanned};

use super::{
    local::{self, StartLocals},
    start::{self, Parts},
};
use crate::model::{Count, Registry, Server};

/// A count given as the path of a `const` of type `ty`, checked when the
/// pipeline compiles: each of `checks` is a condition on the const's value
/// (named `n`) and the message of the compile error when it fails.
fn checked_const(path: &syn::Path, ty: TokenStream, n: &syn::Ident, checks: &[(TokenStream, String)]) -> TokenStream {
    let (conditions, messages): (Vec<_>, Vec<_>) = checks.iter().cloned().unzip();
    quote_spanned! {path.span()=>
        {
            const _: () = {
                let #n: #ty = #path;
                #(::core::assert!(#conditions, #messages);)*
            };
            #path
        }
    }
}

/// How a path reads in a compile error: `REPLICAS`, `config::REPLICAS`.
fn shown(path: &syn::Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

fn stage_trait(server: &Server) -> TokenStream {
    let ty = &server.ty;
    quote_spanned!(ty.span()=> <#ty as ::genflow::__private::Stage>)
}

/// What the input queue of stage `i` carries: its `In`, or for a
/// `#[batch]` stage, the items its `Vec` batches hold: what the stage
/// before it emits, or for the first stage, the items of its `In` (whose
/// `BatchOf` the pipeline's bounds assume; `check` proves it).
pub(crate) fn queued(registry: &Registry, i: usize) -> TokenStream {
    let server = &registry.servers[i];
    let ty = &server.ty;
    match (&server.batch, i.checked_sub(1).map(|prev| &registry.servers[prev].ty)) {
        (None, _) => quote_spanned!(ty.span()=> <#ty as ::genflow::__private::Stage>::In),
        (Some(_), Some(prev)) => quote_spanned!(ty.span()=> <#prev as ::genflow::__private::Stage>::Out),
        (Some(_), None) => quote_spanned!(ty.span()=>
            <<#ty as ::genflow::__private::Stage>::In as ::genflow::__private::BatchOf>::Item
        ),
    }
}

/// How the replicas of stage `i` take their inputs from its queue.
fn intake(registry: &Registry, i: usize) -> TokenStream {
    match &registry.servers[i].batch {
        None => quote!(::genflow::__private::Whole),
        Some(_) => {
            let item = queued(registry, i);
            quote!(::genflow::__private::Batched<#item>)
        }
    }
}

fn gen_server(server: &Server) -> TokenStream {
    let ty = &server.ty;
    quote_spanned!(ty.span()=> <#ty as ::genflow::__private::GenServer>)
}

/// The tuple held by the pipeline: every stage's handle, then the output.
pub(crate) fn handles(registry: &Registry) -> TokenStream {
    let types = registry.servers.iter().map(|s| &s.ty);
    let intakes = (0..registry.servers.len()).map(|i| intake(registry, i));
    let tail = registry.servers.last().map(stage_trait);
    quote!((#(::genflow::__private::StageHandle<#types, #intakes>,)* ::genflow::__private::Plumbing<#tail::Out>,))
}

pub(crate) fn start(registry: &Registry) -> Parts {
    let Registry { servers, .. } = registry;
    let StartLocals { builder, registry: this, start, .. } = &StartLocals::new();
    let sizes = start::sizes();
    let stages: Vec<_> = (0..servers.len()).map(|i| local::numbered("__stage", i)).collect();
    let wirings: Vec<_> = (0..servers.len()).map(|i| local::numbered("__wiring", i)).collect();
    let plumbing_local = local::local("__plumbing");
    let (key, item) = (local::local("__key"), local::local("item"));
    let builds = servers.iter().enumerate().map(|(i, s)| {
        let ty = &s.ty;
        let name = s.name.to_string();
        let count = match &s.replicas.count {
            Count::Lit(n) => quote!(#n),
            Count::Const(path) => {
                let message = format!(
                    "the replica count `{}` of stage `{name}` is 0: a stage needs at least one replica",
                    shown(path)
                );
                let too_many = format!(
                    "the replica count `{}` of stage `{name}` is above `genflow::MAX_REPLICAS` ({}): a stage \
                     has at most that many replicas",
                    shown(path),
                    crate::validate::MAX_REPLICAS,
                );
                let n = local::local("__count");
                checked_const(
                    path,
                    quote!(usize),
                    &n,
                    &[(quote!(#n > 0), message), (quote!(#n <= ::genflow::__private::MAX_REPLICAS), too_many)],
                )
            }
        };
        let max_demand = match &s.max_demand {
            // A stage a fused one follows hands its outputs over in bigger
            // batches (see `pipeline::HANDOVER`).
            None if servers.get(i + 1).is_some_and(|next| next.fused) => quote!(::genflow::pipeline::HANDOVER),
            None => quote!(::genflow::pipeline::BATCH),
            Some(Count::Lit(n)) => quote!(#n),
            Some(Count::Const(path)) => {
                let message = format!(
                    "the max_demand `{}` of stage `{name}` is 0: a replica takes at least one item at a time",
                    shown(path)
                );
                let n = local::local("__demand");
                checked_const(path, quote!(usize), &n, &[(quote!(#n > 0), message)])
            }
        };
        let rate_limit = match &s.rate_limit {
            None => quote!(::core::option::Option::None),
            Some((count, per)) => {
                let n = match count {
                    Count::Lit(n) => {
                        let n = u32::try_from(*n).unwrap_or(u32::MAX);
                        quote!(#n)
                    }
                    Count::Const(path) => {
                        let message = format!(
                            "the rate limit `{}` of stage `{name}` is 0: a rate limit lets at least one item \
                             through per interval",
                            shown(path)
                        );
                        let n = local::local("__rate");
                        checked_const(path, quote!(u32), &n, &[(quote!(#n > 0), message)])
                    }
                };
                let per = quote_spanned!(per.span()=> {
                    let per: ::core::time::Duration = #per;
                    per
                });
                quote!(::core::option::Option::Some((#n, #per)))
            }
        };
        let batch = match &s.batch {
            None => quote!(::core::option::Option::None),
            Some(batch) => {
                let size = match &batch.size {
                    Count::Lit(n) => quote!(#n),
                    Count::Const(path) => {
                        let message = format!(
                            "the batch size `{}` of stage `{name}` is 0: a batch holds at least one item",
                            shown(path)
                        );
                        let n = local::local("__size");
                        checked_const(path, quote!(usize), &n, &[(quote!(#n > 0), message)])
                    }
                };
                let timeout = &batch.timeout;
                let timeout = quote_spanned!(timeout.span()=> {
                    let timeout: ::core::time::Duration = #timeout;
                    timeout
                });
                quote!(::core::option::Option::Some(::genflow::__private::BatchSpec { size: #size, timeout: #timeout }))
            }
        };
        let intake = intake(registry, i);
        let (concurrency, concurrency_ordered) = match &s.concurrency {
            None => (quote!(1usize), false),
            Some((Count::Lit(n), ordered)) => (quote!(#n), *ordered),
            Some((Count::Const(path), ordered)) => {
                let message = format!(
                    "the concurrency `{}` of stage `{name}` is 0: a replica has at least one item in flight",
                    shown(path)
                );
                let n = local::local("__concurrency");
                (checked_const(path, quote!(usize), &n, &[(quote!(#n > 0), message)]), *ordered)
            }
        };
        let head = i == 0;
        let ordered = s.replicas.ordered.is_some();
        let input = queued(registry, i);
        let partition = match &s.replicas.partition_by {
            None => quote!(::core::option::Option::None),
            Some(path) => {
                let (key, item) = (local::shown_at(&key, path.span()), local::shown_at(&item, path.span()));
                quote_spanned! {path.span()=>
                    ::core::option::Option::Some({
                        fn #key(#item: &#input) -> u64 {
                            ::genflow::__private::hash_key(&#path(#item))
                        }
                        #key as fn(&#input) -> u64
                    })
                }
            }
        };
        let (stage, wiring) = (&stages[i], &wirings[i]);
        let i = Index::from(i);
        quote_spanned! {ty.span()=>
            let (#stage, #wiring) = #builder.stage::<#ty, #intake>(::genflow::__private::StageSpec {
                name: #name,
                replicas: #sizes.replicas(#i, #count),
                queue_size: #sizes.queue_size(#i),
                max_demand: #sizes.max_demand(#i, #max_demand),
                rate_limit: #sizes.rate_limit(#i, #name, #rate_limit),
                batch: #sizes.batch(#i, #batch),
                concurrency: #sizes.concurrency(#i, #concurrency),
                concurrency_ordered: #concurrency_ordered,
                partition: #partition,
                head: #head,
                ordered: #ordered,
            });
        }
    });
    let tail_ty = &servers.last().expect("validated: at least one stage").ty;
    let plumbing = Index::from(servers.len());
    // A `#[fused]` stage is not spawned: `fuse_stage` turns it into the
    // downstream of the stage before it. Those are made first, from the
    // last stage back, so a fused stage can emit into a fused one.
    let fused_locals: Vec<_> = (0..servers.len()).map(|i| local::numbered("__fused", i)).collect();
    let downstream = |i: usize| match servers.get(i + 1) {
        Some(next) if next.fused => {
            let local = &fused_locals[i + 1];
            quote!(#local)
        }
        Some(_) => {
            let next = Index::from(i + 1);
            quote!(#this.__genflow.servers().#next.downstream())
        }
        None => quote!(#this.__genflow.servers().#plumbing.downstream()),
    };
    let spawn = |i: usize, s: &crate::model::Server| {
        let ty = &s.ty;
        let index = Index::from(i);
        let wiring = &wirings[i];
        // The stage is emitting its own `Out`, and `relink` names the next
        // stage's input by that type. That the two are one type is checked
        // beside the check that each entry is a stage (`registry::check`),
        // not here: this code assumes every entry is a stage, so an entry
        // that is none would fail the link check too.
        let next = downstream(i);
        let next = match servers.get(i + 1) {
            Some(_) => quote!(::genflow::__private::relink(#next)),
            None => next,
        };
        // The pipeline is the stage's `Registry`: checked by `check`, not
        // restated here (see `registry::bounds`).
        let registry_arg = local::shown_at(this, ty.span());
        let gs = gen_server(s);
        let intake = intake(registry, i);
        if s.fused {
            let local = &fused_locals[i];
            quote_spanned! {ty.span()=>
                let #local = #this.__genflow.fuse_stage::<#ty, <#ty as ::genflow::__private::Stage>::Out>(
                    &#this.__genflow.servers().#index,
                    #wiring,
                    #next,
                    ::genflow::__private::registry_as::<_, #gs::Registry>(&#registry_arg),
                );
            }
        } else {
            quote_spanned! {ty.span()=>
                #this.__genflow.spawn_stage::<#ty, <#ty as ::genflow::__private::Stage>::Out, #intake>(
                    &mut #start,
                    &#this.__genflow.servers().#index,
                    #wiring,
                    #next,
                    ::genflow::__private::registry_as::<_, #gs::Registry>(&#registry_arg),
                );
            }
        }
    };
    let fuses: Vec<_> = servers.iter().enumerate().rev().filter(|(_, s)| s.fused).map(|(i, s)| spawn(i, s)).collect();
    let spawns: Vec<_> = servers.iter().enumerate().filter(|(_, s)| !s.fused).map(|(i, s)| spawn(i, s)).collect();
    let spawns = quote!(#(#fuses)* #(#spawns)*);
    let names = servers.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(" → ");
    let doc = format!(
        "Starts every stage ({names}), wired in that order, and returns once each replica has run `new` and \
         `init`.\n\nThe arguments become the pipeline's fields, readable by every stage through its registry. \
         Dropping the last copy of the returned pipeline (copies held by the stages do not count) shuts it down \
         in the background, draining what was sent.\n\nTo choose replica counts or queue sizes at run time, use \
         `builder`.\n\n# Panics\n\nPanics if called outside a Tokio runtime, \
         if a stage's `channel_queue_size()` is 0, or if a stage's `#[rate_limit(n, per = ..)]` gives \
         0 items or an interval of 0 (the message names the stage)."
    );
    Parts {
        prepare: quote! {
            #(#builds)*
            let #plumbing_local = ::genflow::__private::Plumbing::new::<#tail_ty>(&mut #builder);
        },
        handles: quote!((#(#stages,)* #plumbing_local,)),
        spawns,
        doc,
    }
}

pub(crate) fn methods(registry: &Registry) -> TokenStream {
    let Registry { vis, servers, .. } = registry;
    let head = queued(registry, 0);
    let tail = stage_trait(servers.last().expect("validated: at least one stage"));
    let plumbing = Index::from(servers.len());
    let metrics = (0..servers.len()).map(Index::from);
    let flushes = (0..servers.len()).map(Index::from);
    let per_stage = servers.iter().enumerate().map(|(i, s)| stage_methods(registry, i, s));
    let (item, items, all) = (local::local("item"), local::local("items"), local::local("__servers"));
    quote! {
        /// Sends one item into the first stage, waiting while its queue is
        /// full.
        ///
        /// # Errors
        ///
        /// `SendError::Closed`, holding the item, once the pipeline is
        /// shutting down; `SendError::KeyPanicked`, holding it, if the
        /// first stage's `partition_by` key function panicked on it.
        ///
        /// # Cancel safety
        ///
        /// If dropped before it completes, the item was not sent.
        #vis async fn send(
            &self,
            #item: #head,
        ) -> ::genflow::__private::Result<(), ::genflow::__private::SendError<#head>> {
            self.__genflow.servers().0.send(#item).await
        }

        /// Sends one item into the first stage if its queue has room,
        /// without waiting.
        ///
        /// # Errors
        ///
        /// `SendError::Full` if the queue is full, `Closed` once the
        /// pipeline is shutting down, `KeyPanicked` if the first stage's
        /// `partition_by` key function panicked on it; each holds the item.
        #vis fn try_send(
            &self,
            #item: #head,
        ) -> ::genflow::__private::Result<(), ::genflow::__private::SendError<#head>> {
            self.__genflow.servers().0.try_send(#item)
        }

        /// Sends every item of `items` into the first stage, in order,
        /// waiting for room as needed (backpressure), and returns how many
        /// went in.
        ///
        /// # Errors
        ///
        /// `SendError::Closed` if the pipeline shut down first, or
        /// `KeyPanicked` if the first stage's `partition_by` key function
        /// panicked on an item. An item is
        /// taken from the stream only when there is room for it, so the
        /// error holds the one item in hand; the rest stays in the stream.
        ///
        /// # Cancel safety
        ///
        /// Items sent before the future is dropped stay sent; at most the
        /// one in hand is lost.
        #vis async fn feed(
            &self,
            #items: impl ::genflow::__private::Stream<Item = #head> + ::core::marker::Send,
        ) -> ::genflow::__private::Result<usize, ::genflow::__private::SendError<#head>> {
            self.__genflow.servers().0.feed(#items).await
        }

        /// A `futures::Sink` into the first stage. Clone it for more
        /// senders; closing one sink only drops that sender.
        #vis fn sink(&self) -> ::genflow::InputSink<#head> {
            self.__genflow.servers().0.sink()
        }

        /// The first stage's input for items sent with an acknowledgement
        /// (`genflow::ack::Ack`): `send`, `try_send`, `feed` and `sink`
        /// with an `Ack` beside each item, which fires once every item made
        /// from it has left the pipeline. See `genflow::ack`.
        #vis fn acked(&self) -> ::genflow::AckedInput<#head> {
            self.__genflow.servers().0.acked()
        }

        /// The stream of the last stage's items; `Some` the first time only.
        ///
        /// Until it is taken (and after it is dropped), the last stage's
        /// items are dropped and counted in its `dropped` metric instead of
        /// blocking the pipeline: take it before sending items you want to
        /// see. Once taken, not reading it slows the pipeline down to the
        /// pace of the reader (backpressure).
        #vis fn output(&self) -> ::core::option::Option<::genflow::Output<#tail::Out>> {
            self.__genflow.servers().#plumbing.output()
        }

        /// The stream of the stages' failed items (`genflow::Failure`);
        /// `Some` the first time only. It ends once the pipeline has
        /// drained (or was aborted). Until it is taken, failures are dropped
        /// and counted; once taken, see `genflow::Failures` for its buffer.
        #vis fn failures(&self) -> ::core::option::Option<::genflow::Failures> {
            self.__genflow.servers().#plumbing.failures()
        }

        /// Waits until every item accepted before the call (by `send`, `feed`,
        /// a sink, or `sink_<stage>` into any stage) has left the pipeline:
        /// emitted by the last stage (into the output, or dropped if the
        /// output is not taken), failed, or dropped. Nothing is shut down:
        /// afterwards `call_<stage>` reads state that has seen all of them.
        /// Items sent meanwhile are not waited for. See `genflow::Pipeline::flush`.
        ///
        /// # Errors
        ///
        /// `FlushError::Closed` if the pipeline was shut down or aborted
        /// before, `Aborted` if it is aborted meanwhile, `FromInside` if
        /// called by one of its own stages.
        ///
        /// # Cancel safety
        ///
        /// Cancel safe: a flush only waits; dropping it changes nothing.
        #vis async fn flush(&self) -> ::genflow::__private::Result<(), ::genflow::__private::FlushError> {
            let #all = self.__genflow.servers();
            ::genflow::__private::flush(&[#(#all.#flushes.flush_point(),)*]).await
        }

        /// A snapshot of every stage's metrics; readable at any time, also
        /// after shutdown.
        #vis fn metrics(&self) -> ::genflow::Metrics {
            let #all = self.__genflow.servers();
            #all.#plumbing.metrics(::std::vec![#(#all.#metrics.metrics(),)*])
        }

        #(#per_stage)*
    }
}

/// `impl genflow::Pipeline`, forwarding to the generated methods.
pub(crate) fn trait_impl(registry: &Registry) -> TokenStream {
    let Registry { ident, servers, .. } = registry;
    let head = queued(registry, 0);
    let tail = stage_trait(servers.last().expect("validated: at least one stage"));
    let (item, items, stream) = (local::local("item"), local::local("items"), local::local("__S"));
    let bounds = super::registry::bounds(registry);
    quote! {
        #[automatically_derived]
        impl ::genflow::__private::Pipeline for #ident where #bounds {
            type In = #head;
            type Out = #tail::Out;

            fn send(
                &self,
                #item: Self::In,
            ) -> impl ::core::future::Future<
                Output = ::genflow::__private::Result<(), ::genflow::__private::SendError<Self::In>>,
            > + ::core::marker::Send {
                #ident::send(self, #item)
            }

            fn feed<#stream>(
                &self,
                #items: #stream,
            ) -> impl ::core::future::Future<
                Output = ::genflow::__private::Result<usize, ::genflow::__private::SendError<Self::In>>,
            > + ::core::marker::Send
            where
                #stream: ::genflow::__private::Stream<Item = Self::In> + ::core::marker::Send,
            {
                #ident::feed(self, #items)
            }

            fn acked(&self) -> ::genflow::AckedInput<Self::In> {
                #ident::acked(self)
            }

            fn output(&self) -> ::core::option::Option<::genflow::Output<Self::Out>> {
                #ident::output(self)
            }

            fn failures(&self) -> ::core::option::Option<::genflow::Failures> {
                #ident::failures(self)
            }

            fn metrics(&self) -> ::genflow::Metrics {
                #ident::metrics(self)
            }

            fn flush(
                &self,
            ) -> impl ::core::future::Future<
                Output = ::genflow::__private::Result<(), ::genflow::__private::FlushError>,
            > + ::core::marker::Send {
                #ident::flush(self)
            }

            fn shutdown(&self) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                #ident::shutdown(self)
            }
        }
    }
}

fn stage_methods(registry: &Registry, index: usize, server: &Server) -> TokenStream {
    let vis = &registry.vis;
    let name = &server.name;
    let input = queued(registry, index);
    let index = Index::from(index);
    let gs = gen_server(server);
    let sink = format_ident!("sink_{}", name);
    let call_all = format_ident!("call_{}_all", name);
    let cast_all = format_ident!("cast_{}_all", name);
    let message = local::local("message");
    let sink_doc = format!("A `futures::Sink` into the `{name}` stage's input (see `sink`).");
    let call_all_doc = format!(
        "Calls every replica of the `{name}` stage with a clone of `message`, concurrently; the responses \
         come in replica order.\n\n# Errors\n\nThe first error of any replica, as `call_{name}`."
    );
    let cast_all_doc = format!(
        "Casts a clone of `message` to every replica of the `{name}` stage, in replica order.\n\n# Errors\n\n\
         The first error, as `cast_{name}`; replicas after it got nothing."
    );
    quote! {
        #[doc = #sink_doc]
        #vis fn #sink(&self) -> ::genflow::InputSink<#input> {
            self.__genflow.servers().#index.sink()
        }

        #[doc = #call_all_doc]
        #vis async fn #call_all(
            &self,
            #message: #gs::Message,
        ) -> ::genflow::__private::Result<
            ::std::vec::Vec<#gs::Response>,
            ::genflow::__private::CallError<#gs::Message>,
        >
        where
            for<'__genflow> #gs::Message: ::core::clone::Clone,
        {
            self.__genflow.servers().#index.call_all(#message).await
        }

        #[doc = #cast_all_doc]
        #vis async fn #cast_all(
            &self,
            #message: #gs::Message,
        ) -> ::genflow::__private::Result<(), ::genflow::__private::SendError<#gs::Message>>
        where
            for<'__genflow> #gs::Message: ::core::clone::Clone,
        {
            self.__genflow.servers().#index.cast_all(#message).await
        }
    }
}
