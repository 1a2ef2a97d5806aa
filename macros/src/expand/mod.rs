//! Model → code.

use proc_macro2::TokenStream;

use crate::{
    errors::Errors,
    fallback,
    model::{self, Kind},
    parse, validate,
};

mod local;
mod pipeline;
mod registry;
mod start;

/// The whole expansion of `make_registry` (and of the registry part of
/// `pipeline`). On an error, the errors and stubs of what the input
/// declares (see `fallback`).
pub(crate) fn registry(args: TokenStream, input: TokenStream, kind: Kind) -> TokenStream {
    match checked(args.clone(), input.clone(), kind) {
        Ok(tokens) => tokens,
        Err(error) => fallback::expand(kind, args, input, error),
    }
}

fn checked(args: TokenStream, input: TokenStream, kind: Kind) -> syn::Result<TokenStream> {
    let item = parse::item(input)?;
    let args = parse::args(args)?;
    let mut errors = Errors::default();
    let stages: Vec<_> = match kind {
        Kind::Registry => Vec::new(),
        Kind::Pipeline => args.entries.iter().map(|entry| parse::stage_attrs(&entry.attrs, &mut errors)).collect(),
    };
    validate::syntax(kind, &item, &args, &stages, &mut errors);
    let model = model::build(kind, args, stages, item);
    validate::check(&model, &mut errors);
    errors.finish()?;
    Ok(registry::expand(&model))
}
