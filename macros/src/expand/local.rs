//! The names the generated code binds for itself.
//!
//! Every local variable, parameter and helper item the expansion introduces
//! is spanned at [`Span::mixed_site`]: it is visible only to tokens the
//! expansion wrote, never to the user's tokens, and the user's names never
//! shadow it. This holds whichever macro the user's tokens came through (a
//! `#[pipeline]` written inside `macro_rules!` gets its entries from the
//! caller's context and its attribute from the macro's), because every use
//! of a generated name carries the same span as its binding, however the
//! tokens around it are spanned. The user's types, paths and field names
//! keep their own spans, so errors about them point at the user's code.
//!
//! `self` follows the same rule: the generated methods declare and use it at
//! the call site, and it is never written inside tokens spanned at a user's
//! type.

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::ToTokens;

/// A generated local named `name`.
pub(super) fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The `index`-th of a family of generated locals: `__handle0`, ….
pub(super) fn numbered(prefix: &str, index: usize) -> Ident {
    local(&format!("{prefix}{index}"))
}

/// `self`, spanned where the generated methods declare it.
pub(super) fn this() -> Ident {
    Ident::new("self", Span::call_site())
}

/// `ident`, resolved as before but shown at `at`: for a generated name
/// inside code reported at a user's type, so that an error there points at
/// the type rather than at the whole attribute.
pub(super) fn shown_at(ident: &Ident, at: Span) -> Ident {
    let mut ident = ident.clone();
    ident.set_span(ident.span().located_at(at));
    ident
}

/// The call `call` (`path(args)` or `path::<..>(args)`) shown over the
/// whole of `ty`: its first token at `ty`'s first token, the path's last
/// token and the arguments at `ty`'s last. rustc spans an expression from
/// its first token to its last, so the call, its path and the type
/// argument all cover exactly what the user wrote, and an error about any
/// of them underlines the type once. (syn's span of a type is its first
/// token's only.)
pub(super) fn shown_over(call: TokenStream, ty: &impl ToTokens) -> TokenStream {
    let mut spans = ty.to_token_stream().into_iter().map(|t| t.span());
    let Some(first) = spans.next() else { return call };
    let last = spans.last().unwrap_or(first);
    let mut tokens: Vec<TokenTree> = call.into_iter().collect();
    let count = tokens.len();
    for (i, token) in tokens.iter_mut().enumerate() {
        if i == 0 {
            token.set_span(first);
        } else if i + 2 >= count {
            token.set_span(last);
        }
    }
    tokens.into_iter().collect()
}

/// The locals of a generated `start`.
pub(super) struct StartLocals {
    /// The `Builder` the queues are made with.
    pub(super) builder: Ident,
    /// The registry's `Core`, then the registry's hidden field taken back.
    pub(super) core: Ident,
    /// The inner copy of the registry the servers are spawned with.
    pub(super) registry: Ident,
    /// The `Start` that collects readiness.
    pub(super) start: Ident,
}

impl StartLocals {
    pub(super) fn new() -> Self {
        StartLocals {
            builder: local("__builder"),
            core: local("__core"),
            registry: local("__registry"),
            start: local("__start"),
        }
    }
}
