//! What a macro emits when its input has an error: the error, the user's
//! struct unchanged, and stubs of everything the macro would have generated
//! (`Clone`, `start`, `builder` and the hidden traits `genflow::Builder`
//! needs, the per-server methods, the pipeline methods and `impl Pipeline`),
//! with the real signatures and bodies that never run.
//!
//! The stubs keep the one mistake to one error: code that uses the struct
//! (`Flow::start().await`, `flow.call_parse(..)`, a server whose `Registry`
//! is `Flow` and so needs it `Clone`) still type-checks, instead of each use
//! adding an error about an item that is missing only because of the first.
//! thiserror's `fallback.rs` does the same for `#[derive(Error)]`.
//!
//! A stub that names a server's associated types carries a
//! `where for<'__genflow> Server: GenServer` bound (or `Stage`): the
//! higher-ranked form is not checked where it is written, so a list entry
//! that is not a server yet (or names no type at all) adds no error here;
//! it would only add one at a call of that very method.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::{
    Attribute, Ident, ItemStruct, Token, Type,
    parse::{ParseStream, Parser},
};

use crate::{model::Kind, parse::Entry};

/// The error, the item and stubs; the item as written if it is not a struct.
pub(crate) fn expand(kind: Kind, args: TokenStream, input: TokenStream, error: syn::Error) -> TokenStream {
    let mut out = error.into_compile_error();
    let Ok(item) = syn::parse2::<ItemStruct>(input.clone()) else {
        out.extend(input);
        return out;
    };
    let entries = entries(args);
    out.extend(quote!(#item));
    out.extend(stubs(kind, &item, &entries));
    out
}

/// The entries of the argument list up to the first one that does not
/// parse: a syntax error late in the list keeps the methods of the servers
/// before it.
fn entries(args: TokenStream) -> Vec<Entry> {
    let parser = |input: ParseStream<'_>| {
        let mut entries = Vec::new();
        while !input.is_empty() {
            match input.parse::<Entry>() {
                Ok(entry) => entries.push(entry),
                Err(_) => break,
            }
            if input.is_empty() || input.parse::<Token![,]>().is_err() {
                break;
            }
        }
        // Whatever follows the first error is skipped.
        input.step(|cursor| {
            let mut rest = *cursor;
            while let Some((_, next)) = rest.token_tree() {
                rest = next;
            }
            Ok(((), rest))
        })?;
        Ok(entries)
    };
    parser.parse2(args).unwrap_or_default()
}

fn stubs(kind: Kind, item: &ItemStruct, entries: &[Entry]) -> TokenStream {
    let ident = &item.ident;
    let vis = &item.vis;
    let (impl_generics, ty_generics, where_clause) = item.generics.split_for_impl();
    // A tuple struct is an error of its own; its fields are named by place.
    let params: Vec<Param<'_>> = item
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| Param(f.ident.clone().unwrap_or_else(|| format_ident!("field{}", i)), &f.ty))
        .collect();
    // The struct's own `#[derive(Clone)]` is an error of its own; a second
    // `Clone` impl would add another.
    let clone = (!item.attrs.iter().any(derives_clone)).then(|| {
        quote! {
            #[automatically_derived]
            impl #impl_generics ::core::clone::Clone for #ident #ty_generics #where_clause {
                fn clone(&self) -> Self {
                    ::core::unreachable!()
                }
            }
        }
    });
    // Two entries of one name (or `x` beside `x_all`) are an error of their
    // own; each method is stubbed once.
    let mut names = std::collections::HashSet::new();
    let servers: Vec<TokenStream> = entries
        .iter()
        .flat_map(|e| server(kind, vis, e))
        .filter(|(name, _)| names.insert(name.to_string()))
        .map(|(_, method)| method)
        .collect();
    let pipeline = match (kind, entries.first(), entries.last()) {
        (Kind::Pipeline, Some(head), Some(tail)) => pipeline_methods(vis, head, &tail.ty),
        _ => TokenStream::new(),
    };
    let metrics = (kind == Kind::Pipeline).then(|| {
        quote! {
            #vis fn metrics(&self) -> ::genflow::Metrics {
                ::core::unreachable!()
            }

            #vis fn failures(&self) -> ::core::option::Option<::genflow::Failures> {
                ::core::unreachable!()
            }

            #vis async fn flush(&self) -> ::core::result::Result<(), ::genflow::FlushError> {
                ::core::unreachable!()
            }
        }
    });
    let pipeline_impl = match (kind, entries.first(), entries.last(), item.generics.params.is_empty()) {
        (Kind::Pipeline, Some(head), Some(tail), true) => pipeline_impl(ident, head, &tail.ty),
        _ => TokenStream::new(),
    };
    // A generic struct is an error of its own; its builder is not stubbed.
    let (builder, configurable) = if item.generics.params.is_empty() {
        let types: Vec<&Type> = params.iter().map(|Param(_, ty)| *ty).collect();
        (
            quote! {
                #vis fn builder(#(#params),*) -> ::genflow::Builder<Self> {
                    ::core::unreachable!()
                }
            },
            configurable(kind, ident, &types, entries),
        )
    } else {
        (TokenStream::new(), TokenStream::new())
    };
    quote! {
        const _: () = {
            #clone

            #[allow(dead_code, unused_variables, missing_docs, clippy::all)]
            impl #impl_generics #ident #ty_generics #where_clause {
                #vis async fn start(#(#params),*) -> Self {
                    ::core::unreachable!()
                }

                #vis async fn shutdown(&self) {
                    ::core::unreachable!()
                }

                #vis fn abort(&self) {
                    ::core::unreachable!()
                }

                #builder
                #metrics
                #pipeline
                #(#servers)*
            }

            #pipeline_impl
            #configurable
        };
    }
}

/// One parameter of `start` and `builder`: a field's name and type.
struct Param<'a>(Ident, &'a Type);

impl ToTokens for Param<'_> {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let Param(name, ty) = self;
        tokens.extend(quote!(#name: #ty));
    }
}

/// The hidden traits `genflow::Builder` needs of what it starts:
/// `Configurable` with the declared names, and for a pipeline `Replicated`,
/// so that `R::builder(..).replicas(..).queue_size(..).start()` type-checks
/// as it would with the real expansion.
fn configurable(kind: Kind, ident: &Ident, types: &[&Type], entries: &[Entry]) -> TokenStream {
    let noun = kind.noun();
    let mut seen = std::collections::HashSet::new();
    let names = entries.iter().map(|e| e.name.to_string()).filter(|name| seen.insert(name.clone()));
    let replicated = (kind == Kind::Pipeline).then(|| {
        quote! {
            #[automatically_derived]
            impl ::genflow::__private::Replicated for #ident {}
        }
    });
    quote! {
        #[automatically_derived]
        #[allow(clippy::all)]
        impl ::genflow::__private::Configurable for #ident {
            type Fields = (#(#types,)*);
            const KIND: &'static str = #noun;
            const NAMES: &'static [&'static str] = &[#(#names),*];

            fn start_sized(
                _: Self::Fields,
                _: ::genflow::__private::Sizes,
            ) -> impl ::core::future::Future<Output = Self> {
                async { ::core::unreachable!() }
            }
        }

        #replicated
    }
}

fn derives_clone(attr: &Attribute) -> bool {
    let mut clone = false;
    if attr.path().is_ident("derive") {
        let _ = attr.parse_nested_meta(|meta| {
            clone |= meta.path.segments.last().is_some_and(|s| s.ident == "Clone");
            Ok(())
        });
    }
    clone
}

/// `for<'__genflow> ty: Trait`, checked only where the stub is used.
fn bound(ty: &Type, tr: &str) -> TokenStream {
    let tr = Ident::new(tr, Span::call_site());
    quote!(for<'__genflow> #ty: ::genflow::__private::#tr)
}

/// What a stage's input queue carries (its `In`, or for a `#[batch(..)]`
/// stage the items of its `Vec`), and the bound that says it is a stage
/// with such an input.
fn queued(entry: &Entry) -> (TokenStream, TokenStream) {
    let ty = &entry.ty;
    let stage = bound(ty, "Stage");
    if entry.attrs.iter().any(|a| a.path().is_ident("batch")) {
        let input = quote!(<#ty as ::genflow::__private::Stage>::In);
        (
            quote!(<#input as ::genflow::__private::BatchOf>::Item),
            quote!(#stage, for<'__genflow> #input: ::genflow::__private::BatchOf),
        )
    } else {
        (quote!(<#ty as ::genflow::__private::Stage>::In), stage)
    }
}

/// The `call_`/`cast_` methods of one server, and for a stage its sink and
/// `_all` methods, each with its name.
fn server(kind: Kind, vis: &syn::Visibility, entry: &Entry) -> Vec<(Ident, TokenStream)> {
    let (name, ty) = (&entry.name, &entry.ty);
    let gs = quote!(<#ty as ::genflow::__private::GenServer>);
    let (message, response) = (quote!(#gs::Message), quote!(#gs::Response));
    let is_server = bound(ty, "GenServer");
    let call_result = quote!(::core::result::Result<#response, ::genflow::__private::CallError<#message>>);
    let cast_result = quote!(::core::result::Result<(), ::genflow::__private::SendError<#message>>);
    let (call, call_timeout) = (format_ident!("call_{}", name), format_ident!("call_{}_with_timeout", name));
    let (cast, try_cast) = (format_ident!("cast_{}", name), format_ident!("try_cast_{}", name));
    let mut out = vec![
        (
            call.clone(),
            quote! {
                #vis async fn #call(&self, message: #message) -> #call_result where #is_server {
                    ::core::unreachable!()
                }
            },
        ),
        (
            call_timeout.clone(),
            quote! {
                #vis async fn #call_timeout(
                    &self,
                    message: #message,
                    timeout: ::core::time::Duration,
                ) -> #call_result where #is_server {
                    ::core::unreachable!()
                }
            },
        ),
        (
            cast.clone(),
            quote! {
                #vis async fn #cast(&self, message: #message) -> #cast_result where #is_server {
                    ::core::unreachable!()
                }
            },
        ),
        (
            try_cast.clone(),
            quote! {
                #vis fn #try_cast(&self, message: #message) -> #cast_result where #is_server {
                    ::core::unreachable!()
                }
            },
        ),
    ];
    if kind == Kind::Pipeline {
        let (input, is_stage) = queued(entry);
        let (sink, call_all, cast_all) =
            (format_ident!("sink_{}", name), format_ident!("call_{}_all", name), format_ident!("cast_{}_all", name));
        out.push((
            sink.clone(),
            quote! {
                #vis fn #sink(&self) -> ::genflow::InputSink<#input> where #is_stage {
                    ::core::unreachable!()
                }
            },
        ));
        out.push((
            call_all.clone(),
            quote! {
                #vis async fn #call_all(
                    &self,
                    message: #message,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<#response>,
                    ::genflow::__private::CallError<#message>,
                >
                where
                    #is_server,
                    for<'__genflow> #message: ::core::clone::Clone,
                {
                    ::core::unreachable!()
                }
            },
        ));
        out.push((
            cast_all.clone(),
            quote! {
                #vis async fn #cast_all(&self, message: #message) -> #cast_result
                where
                    #is_server,
                    for<'__genflow> #message: ::core::clone::Clone,
                {
                    ::core::unreachable!()
                }
            },
        ));
    }
    out
}

/// `send`, `try_send`, `feed`, `sink` and `output`.
fn pipeline_methods(vis: &syn::Visibility, head: &Entry, tail: &Type) -> TokenStream {
    let (input, head_stage) = queued(head);
    let tail_stage = bound(tail, "Stage");
    let output = quote!(<#tail as ::genflow::__private::Stage>::Out);
    let send_result = quote!(::core::result::Result<(), ::genflow::__private::SendError<#input>>);
    quote! {
        #vis async fn send(&self, item: #input) -> #send_result where #head_stage {
            ::core::unreachable!()
        }

        #vis fn try_send(&self, item: #input) -> #send_result where #head_stage {
            ::core::unreachable!()
        }

        #vis async fn feed(
            &self,
            items: impl ::genflow::__private::Stream<Item = #input> + ::core::marker::Send,
        ) -> ::core::result::Result<usize, ::genflow::__private::SendError<#input>>
        where
            #head_stage,
        {
            ::core::unreachable!()
        }

        #vis fn sink(&self) -> ::genflow::InputSink<#input> where #head_stage {
            ::core::unreachable!()
        }

        #vis fn acked(&self) -> ::genflow::AckedInput<#input> where #head_stage {
            ::core::unreachable!()
        }

        #vis fn output(&self) -> ::core::option::Option<::genflow::Output<#output>> where #tail_stage {
            ::core::unreachable!()
        }
    }
}

/// `impl genflow::Pipeline`, for code generic over pipelines.
fn pipeline_impl(ident: &Ident, head: &Entry, tail: &Type) -> TokenStream {
    let (input, head_stage) = queued(head);
    let tail_stage = bound(tail, "Stage");
    quote! {
        #[automatically_derived]
        #[allow(clippy::all)]
        impl ::genflow::__private::Pipeline for #ident where #head_stage, #tail_stage {
            type In = #input;
            type Out = <#tail as ::genflow::__private::Stage>::Out;

            fn send(
                &self,
                item: Self::In,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::genflow::__private::SendError<Self::In>>,
            > + ::core::marker::Send {
                async { ::core::unreachable!() }
            }

            fn feed<S>(
                &self,
                items: S,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<usize, ::genflow::__private::SendError<Self::In>>,
            > + ::core::marker::Send
            where
                S: ::genflow::__private::Stream<Item = Self::In> + ::core::marker::Send,
            {
                async { ::core::unreachable!() }
            }

            fn acked(&self) -> ::genflow::AckedInput<Self::In> {
                ::core::unreachable!()
            }

            fn output(&self) -> ::core::option::Option<::genflow::Output<Self::Out>> {
                ::core::unreachable!()
            }

            fn failures(&self) -> ::core::option::Option<::genflow::Failures> {
                ::core::unreachable!()
            }

            fn metrics(&self) -> ::genflow::Metrics {
                ::core::unreachable!()
            }

            fn flush(
                &self,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::genflow::FlushError>,
            > + ::core::marker::Send {
                async { ::core::unreachable!() }
            }

            fn shutdown(&self) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                async { ::core::unreachable!() }
            }
        }
    }
}
