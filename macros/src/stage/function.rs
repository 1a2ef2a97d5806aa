//! `#[stage]` on a function: a stage type that runs it on each item.
//!
//! The function keeps its name and body (it stays callable, e.g. from unit
//! tests). Beside it comes `pub struct CamelName<R>`, generic over the
//! registry so one function serves any pipeline, with a `GenServer` impl
//! that takes no calls and a `Stage` impl whose `process` calls the
//! function and emits what it returns. What is emitted is read off the
//! return type: see `Shape`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, GenericArgument, Ident, ItemFn, PathArguments, ReturnType, Type, TypeParamBound, spanned::Spanned};

use super::with_error;

/// What a stage function returns, and so what `process` emits.
enum Shape {
    /// `()` or nothing: emits nothing; `Out = ()`.
    Nothing,
    /// `T`: emits it.
    One(Type),
    /// `Option<T>`: emits the value if there is one.
    Optional(Type),
    /// `Vec<T>` or `impl Iterator<Item = T>`: emits every item, in order.
    /// (Not `impl IntoIterator`: its iterator type is hidden, so the
    /// `process` future holding it across `emit` could not be `Send`.)
    Many(Type),
    /// `Result<S, E>`: `Ok` is emitted as `S` says, `Err` fails the item.
    Fallible(Box<Shape>),
}

impl Shape {
    fn of(output: &ReturnType) -> syn::Result<Shape> {
        match output {
            ReturnType::Default => Ok(Shape::Nothing),
            ReturnType::Type(_, ty) => Shape::of_type(ty),
        }
    }

    fn of_type(ty: &Type) -> syn::Result<Shape> {
        match ty {
            Type::Tuple(tuple) if tuple.elems.is_empty() => Ok(Shape::Nothing),
            Type::Paren(inner) => Shape::of_type(&inner.elem),
            Type::Path(path) if path.qself.is_none() => {
                let last = path.path.segments.last().expect("a path has a segment");
                let first_arg = match &last.arguments {
                    PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
                        GenericArgument::Type(ty) => Some(ty.clone()),
                        _ => None,
                    }),
                    _ => None,
                };
                match (last.ident.to_string().as_str(), first_arg) {
                    ("Option", Some(inner)) => Ok(Shape::Optional(inner)),
                    ("Vec", Some(inner)) => Ok(Shape::Many(inner)),
                    ("Result", Some(inner)) => Ok(Shape::Fallible(Box::new(Shape::of_type(&inner)?))),
                    _ => Ok(Shape::One(ty.clone())),
                }
            }
            Type::ImplTrait(bounds) => {
                let item = bounds.bounds.iter().find_map(|bound| match bound {
                    TypeParamBound::Trait(bound) => {
                        let last = bound.path.segments.last()?;
                        if last.ident != "Iterator" {
                            return None;
                        }
                        match &last.arguments {
                            PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
                                GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(assoc.ty.clone()),
                                _ => None,
                            }),
                            _ => None,
                        }
                    }
                    _ => None,
                });
                item.map(Shape::Many).ok_or_else(|| {
                    syn::Error::new_spanned(
                        ty,
                        "a stage function may return `impl Iterator<Item = Out>` (emitting every item); for other \
                         traits, return a concrete type such as a `Vec<Out>`",
                    )
                })
            }
            _ => Ok(Shape::One(ty.clone())),
        }
    }

    /// The items emitted, `()` when nothing is.
    fn out(&self) -> TokenStream {
        match self {
            Shape::Nothing => quote!(()),
            Shape::One(ty) | Shape::Optional(ty) | Shape::Many(ty) => quote!(#ty),
            Shape::Fallible(inner) => inner.out(),
        }
    }

    /// Whether this shape emits nothing, as an `Emitter`-taking function's
    /// must (it emits through the emitter).
    fn emits_nothing(&self) -> bool {
        match self {
            Shape::Nothing => true,
            Shape::Fallible(inner) => inner.emits_nothing(),
            _ => false,
        }
    }

    /// Statements emitting what `value` holds through `out`.
    fn emit(&self, value: &Ident, out: &Ident) -> TokenStream {
        match self {
            Shape::Nothing => quote!(let () = #value;),
            Shape::One(_) => quote!(#out.emit(#value).await;),
            Shape::Optional(_) => quote! {
                if let ::core::option::Option::Some(#value) = #value {
                    #out.emit(#value).await;
                }
            },
            Shape::Many(_) => quote! {
                for #value in #value {
                    #out.emit(#value).await;
                }
            },
            Shape::Fallible(inner) => {
                let ok = inner.emit(value, out);
                quote! {
                    match #value {
                        ::core::result::Result::Ok(#value) => { #ok }
                        ::core::result::Result::Err(__genflow_error) => {
                            ::genflow::__private::fail_item(#out, __genflow_error)
                        }
                    }
                }
            }
        }
    }
}

/// `parse_line` → `ParseLine`.
fn camel_case(ident: &Ident) -> Ident {
    let name = ident.to_string();
    let mut camel = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.extend(c.to_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    Ident::new(&camel, ident.span())
}

/// The `T` of `&mut Emitter<T>`, if `ty` is one.
fn emitter_item(ty: &Type) -> Option<&Type> {
    let Type::Reference(reference) = ty else { return None };
    reference.mutability?;
    let Type::Path(path) = &*reference.elem else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Emitter" {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) if args.args.len() == 1 => match args.args.first()? {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn expand(function: ItemFn) -> TokenStream {
    match stage(&function) {
        Ok(stage) => quote!(#function #stage),
        Err(error) => {
            let stub = stub(&function);
            with_error(quote!(#function #stub), error)
        }
    }
}

/// After an error: the stage type with the `In` and `Out` that can still be
/// read off the signature (`()` otherwise) and empty bodies, so a pipeline
/// naming it reports nothing more than the error itself.
fn stub(function: &ItemFn) -> TokenStream {
    let sig = &function.sig;
    let generic = !sig.generics.params.is_empty();
    let mut typed = sig.inputs.iter().filter_map(|arg| match arg {
        FnArg::Typed(arg) => Some(&arg.ty),
        FnArg::Receiver(_) => None,
    });
    let item_ty = match typed.next() {
        Some(ty) if !generic && !matches!(&**ty, Type::ImplTrait(_)) => quote!(#ty),
        _ => quote!(()),
    };
    let out_ty = match (typed.next().and_then(|ty| emitter_item(ty)), Shape::of(&sig.output)) {
        _ if generic => quote!(()),
        (Some(out), _) => quote!(#out),
        (None, Ok(shape)) => shape.out(),
        (None, Err(_)) => quote!(()),
    };
    let (vis, ty) = (&function.vis, camel_case(&sig.ident));
    let doc = format!("The pipeline stage running [`{}`] (not built: see the error).", sig.ident);
    let process = quote!(async fn process(&mut self, _: #item_ty, _: &mut ::genflow::Emitter<#out_ty>) {});
    unit_stage(Span::call_site(), vis, &ty, &doc, &item_ty, &out_ty, &process)
}

fn stage(function: &ItemFn) -> syn::Result<TokenStream> {
    let sig = &function.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a stage function cannot be generic: its stage type needs one `In` and one `Out`; \
             write an `impl Stage` for a generic type instead",
        ));
    }
    let mut inputs = sig.inputs.iter();
    let item_ty = match inputs.next() {
        Some(FnArg::Typed(arg)) => &arg.ty,
        Some(receiver @ FnArg::Receiver(_)) => {
            return Err(syn::Error::new(
                receiver.span(),
                "a stage function is a free function: it takes the item, not `self`",
            ));
        }
        None => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "a stage function takes the item it processes: `fn name(item: In) -> Out`",
            ));
        }
    };
    if let Type::ImplTrait(_) = &**item_ty {
        return Err(syn::Error::new(item_ty.span(), "a stage function takes one concrete item type, not `impl Trait`"));
    }
    let emitter = match inputs.next() {
        None => None,
        Some(FnArg::Typed(arg)) => match emitter_item(&arg.ty) {
            Some(out) => Some(out),
            None => {
                return Err(syn::Error::new_spanned(
                    &arg.ty,
                    "the second parameter of a stage function, if any, is `out: &mut Emitter<Out>`; \
                     the item is the only other input",
                ));
            }
        },
        Some(receiver) => {
            return Err(syn::Error::new(receiver.span(), "a stage function cannot take `self`"));
        }
    };
    if let Some(extra) = inputs.next() {
        return Err(syn::Error::new(
            extra.span(),
            "a stage function takes the item and, optionally, `out: &mut Emitter<Out>`; nothing else",
        ));
    }
    let shape = Shape::of(&sig.output)?;
    let out_ty = match emitter {
        Some(out) if shape.emits_nothing() => quote!(#out),
        Some(_) => {
            let returned = match &sig.output {
                ReturnType::Type(_, ty) => ty,
                ReturnType::Default => unreachable!("a function returning nothing emits nothing"),
            };
            return Err(syn::Error::new_spanned(
                returned,
                "a stage function that takes an `Emitter` emits through it: it returns `()` or \
                 `Result<(), E>`",
            ));
        }
        None => shape.out(),
    };

    let vis = &function.vis;
    let name = &sig.ident;
    let ty = camel_case(name);
    let span = sig.ident.span();
    let (value, out, item) = (
        Ident::new("__genflow_value", Span::mixed_site()),
        Ident::new("__genflow_out", Span::mixed_site()),
        Ident::new("__genflow_item", Span::mixed_site()),
    );
    let call = match emitter {
        Some(_) => quote!(#name(#item, #out)),
        None => quote!(#name(#item)),
    };
    let call = match sig.asyncness {
        Some(_) => quote!(#call.await),
        None => call,
    };
    let emit = shape.emit(&value, &out);
    let doc = format!(
        "The pipeline stage running [`{name}`] on each item, in any pipeline: name it as \
         `{ty}<Pipeline>`. It takes no calls (`Message` and `Response` are `()`)."
    );
    let process = quote_spanned! {span=>
        async fn process(&mut self, #item: #item_ty, #out: &mut ::genflow::Emitter<#out_ty>) {
            let #value = #call;
            #emit
        }
    };
    Ok(unit_stage(span, vis, &ty, &doc, &item_ty, &out_ty, &process))
}

/// A unit stage type generic over its registry (any pipeline), taking no
/// calls, whose `process` is `process`; every token spanned at `span`.
///
/// The registry parameter defaults to `NoPipeline`, so the type written
/// without it is still a type: a pipeline naming it so reports one error,
/// asking for `Type<Pipeline>` (see `genflow::__private::NamesPipeline`).
fn unit_stage(
    span: Span,
    vis: &syn::Visibility,
    ty: &Ident,
    doc: &str,
    item_ty: &dyn quote::ToTokens,
    out_ty: &dyn quote::ToTokens,
    process: &TokenStream,
) -> TokenStream {
    let registry = format_ident!("R", span = Span::mixed_site());
    quote_spanned! {span=>
        #[doc = #doc]
        #vis struct #ty<#registry = ::genflow::__private::NoPipeline>(
            ::core::marker::PhantomData<fn() -> #registry>,
        );

        impl<#registry> ::genflow::GenServer for #ty<#registry>
        where
            #registry: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            type Message = ();
            type Response = ();
            type Registry = #registry;

            fn new(_: #registry) -> Self {
                #ty(::core::marker::PhantomData)
            }

            async fn handle_call(&mut self, _: ()) {}
        }

        impl<#registry> ::genflow::Stage for #ty<#registry>
        where
            #registry: ::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            type In = #item_ty;
            type Out = #out_ty;

            #process
        }
    }
}
