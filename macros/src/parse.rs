//! Tokens → syntax: the macro's argument list and the struct it decorates.

use proc_macro2::TokenStream;
use syn::{
    Attribute, Ident, ItemStruct, Token, Type,
    parse::{Parse, ParseStream},
    punctuated::Punctuated,
};

/// The argument list: `name: Type, #[attr] name: Type, ...`.
pub(crate) struct Args {
    pub(crate) entries: Punctuated<Entry, Token![,]>,
}

/// One `name: Type` entry, with the attributes written before it.
pub(crate) struct Entry {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) name: Ident,
    pub(crate) ty: Type,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Ok(Args { entries: Punctuated::parse_terminated(input)? })
    }
}

impl Parse for Entry {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let name: Ident = input.parse().map_err(|e| {
            syn::Error::new(e.span(), "expected a server entry `name: Type`, such as `counter: Counter`")
        })?;
        if !input.peek(Token![:]) {
            return Err(syn::Error::new(
                name.span(),
                format_args!("expected `{name}: Type`: each entry names a server and its type"),
            ));
        }
        input.parse::<Token![:]>()?;
        let ty = if input.is_empty() || input.peek(Token![,]) {
            Err(input.error(format_args!("expected the server type of `{name}`")))
        } else {
            input.parse::<Type>()
        }
        .map_err(|e| {
            syn::Error::new(e.span(), format_args!("expected a type for `{name}`, such as `{name}: MyServer`"))
        })?;
        Ok(Entry { attrs, name, ty })
    }
}

pub(crate) fn args(tokens: TokenStream) -> syn::Result<Args> {
    syn::parse2(tokens)
}

pub(crate) fn item(tokens: TokenStream) -> syn::Result<ItemStruct> {
    syn::parse2::<ItemStruct>(tokens).map_err(|e| {
        syn::Error::new(e.span(), "a registry is declared on a struct: `struct App;` or `struct App { fields }`")
    })
}
