//! Tokens → syntax: the macro's argument list, the struct it decorates and
//! the stage attributes, as written. Nothing here judges what it read:
//! `validate` does.

use proc_macro2::{Span, TokenStream};
use syn::{
    Attribute, Ident, ItemStruct, LitInt, Path, Token, Type,
    parse::{Parse, ParseStream, discouraged::Speculative},
    punctuated::Punctuated,
};

use crate::errors::Errors;

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

mod kw {
    syn::custom_keyword!(partition_by);
    syn::custom_keyword!(ordered);
}

/// The attributes written before one pipeline stage, as written: every
/// `#[replicas(..)]` that parsed, and the paths of any other attribute.
/// `validate` says what is wrong with them; `model` reads the first
/// `#[replicas(..)]`.
#[derive(Default)]
pub(crate) struct StageAttrs {
    pub(crate) unknown: Vec<Path>,
    pub(crate) replicas: Vec<ReplicasAttr>,
    /// Every `#[fused]`, as written (arguments included).
    pub(crate) fused: Vec<Attribute>,
    /// Every `#[max_demand(..)]` that parsed, with its count.
    pub(crate) max_demand: Vec<(Attribute, Count)>,
    /// Every `#[rate_limit(..)]` that parsed.
    pub(crate) rate_limit: Vec<RateLimitAttr>,
    /// Every `#[batch(..)]` that parsed.
    pub(crate) batch: Vec<BatchAttr>,
    /// Every `#[concurrency(..)]` that parsed.
    pub(crate) concurrency: Vec<ConcurrencyAttr>,
}

/// One `#[batch(size = n, timeout = duration)]`.
pub(crate) struct BatchAttr {
    pub(crate) attr: Attribute,
    /// The most items in a batch: a literal or the path of a const.
    pub(crate) size: Option<Count>,
    /// How long the oldest item of an open batch waits: an expression of
    /// type `std::time::Duration`.
    pub(crate) timeout: Option<syn::Expr>,
}

/// One `#[concurrency(n)]` or `#[concurrency(n, ordered)]`.
pub(crate) struct ConcurrencyAttr {
    pub(crate) attr: Attribute,
    pub(crate) count: Count,
    pub(crate) ordered: bool,
}

/// One `#[rate_limit(n, per = duration)]`.
pub(crate) struct RateLimitAttr {
    pub(crate) attr: Attribute,
    pub(crate) count: Count,
    /// The interval: an expression of type `std::time::Duration`.
    pub(crate) per: Option<syn::Expr>,
}

/// One `#[replicas(count, options..)]`.
pub(crate) struct ReplicasAttr {
    pub(crate) attr: Attribute,
    pub(crate) count: Option<Count>,
    pub(crate) options: Vec<ReplicaOption>,
}

/// A replica count: a literal, or the path of a `const usize`.
pub(crate) enum Count {
    Lit(LitInt),
    Const(Path),
}

/// An option after the count.
pub(crate) enum ReplicaOption {
    /// A second count.
    Count(LitInt),
    PartitionBy(kw::partition_by, Option<Path>),
    Ordered(Span),
}

pub(crate) const REPLICA_OPTIONS: &str = "expected one of: a replica count such as `4` or `REPLICAS` (a `const usize`), \
     `partition_by = path::to::key_fn`, `ordered`";

/// Reads the attributes of one pipeline stage; syntax errors go to `errors`.
pub(crate) fn stage_attrs(attrs: &[Attribute], errors: &mut Errors) -> StageAttrs {
    let mut out = StageAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("fused") {
            out.fused.push(attr.clone());
            continue;
        }
        if attr.path().is_ident("rate_limit") {
            match attr.parse_args_with(parse_rate_limit) {
                Ok((count, per)) => out.rate_limit.push(RateLimitAttr { attr: attr.clone(), count, per }),
                Err(error) => errors.push(error),
            }
            continue;
        }
        if attr.path().is_ident("batch") {
            match attr.parse_args_with(parse_batch) {
                Ok((size, timeout)) => out.batch.push(BatchAttr { attr: attr.clone(), size, timeout }),
                Err(error) => errors.push(error),
            }
            continue;
        }
        if attr.path().is_ident("concurrency") {
            match attr.parse_args_with(parse_concurrency) {
                Ok((count, ordered)) => out.concurrency.push(ConcurrencyAttr { attr: attr.clone(), count, ordered }),
                Err(error) => errors.push(error),
            }
            continue;
        }
        if attr.path().is_ident("max_demand") {
            match attr.parse_args_with(parse_demand) {
                Ok(count) => out.max_demand.push((attr.clone(), count)),
                Err(error) => errors.push(error),
            }
            continue;
        }
        if !attr.path().is_ident("replicas") {
            out.unknown.push(attr.path().clone());
            continue;
        }
        match attr.parse_args_with(parse_replicas) {
            Ok((count, options)) => out.replicas.push(ReplicasAttr { attr: attr.clone(), count, options }),
            Err(error) => errors.push(error),
        }
    }
    out
}

fn parse_replicas(input: ParseStream<'_>) -> syn::Result<(Option<Count>, Vec<ReplicaOption>)> {
    let mut count = None;
    if input.is_empty() {
        return Ok((count, Vec::new()));
    }
    if !input.peek(kw::partition_by) && !input.peek(kw::ordered) {
        count = Some(input.parse::<Count>()?);
        if input.is_empty() {
            return Ok((count, Vec::new()));
        }
        input.parse::<Token![,]>()?;
    }
    let options = Punctuated::<ReplicaOption, Token![,]>::parse_terminated(input)?;
    Ok((count, options.into_iter().collect()))
}

const MAX_DEMAND: &str = "`#[max_demand(..)]` takes how many items one replica takes at a time: a count such as \
     `#[max_demand(1)]`, or the path of a `const usize`";

/// A count of an attribute other than `#[replicas(..)]`: a literal or the
/// path of a const; anything else is an error saying `usage`.
fn parse_count(input: ParseStream<'_>, usage: &str) -> syn::Result<Count> {
    if input.peek(LitInt) {
        return Ok(Count::Lit(input.parse()?));
    }
    input.parse::<Path>().map(Count::Const).map_err(|error| syn::Error::new(error.span(), usage))
}

/// The count of `#[max_demand(..)]`: a literal or the path of a const.
fn parse_demand(input: ParseStream<'_>) -> syn::Result<Count> {
    let count = parse_count(input, MAX_DEMAND)?;
    if !input.is_empty() {
        return Err(syn::Error::new(input.span(), MAX_DEMAND));
    }
    Ok(count)
}

const CONCURRENCY: &str = "`#[concurrency(..)]` takes how many items of one replica may be in flight at once: a \
     count such as `#[concurrency(16)]` or the path of a `const usize`, then optionally `ordered`: \
     `#[concurrency(16, ordered)]`";

/// The count of `#[concurrency(n)]`, and whether `ordered` follows it.
fn parse_concurrency(input: ParseStream<'_>) -> syn::Result<(Count, bool)> {
    let count = parse_count(input, CONCURRENCY)?;
    if input.is_empty() {
        return Ok((count, false));
    }
    input.parse::<Token![,]>()?;
    if input.is_empty() {
        return Ok((count, false));
    }
    input.parse::<kw::ordered>().map_err(|e| syn::Error::new(e.span(), CONCURRENCY))?;
    input.parse::<Option<Token![,]>>()?;
    if !input.is_empty() {
        return Err(syn::Error::new(input.span(), CONCURRENCY));
    }
    Ok((count, true))
}

const RATE_LIMIT: &str = "`#[rate_limit(..)]` takes how many items may go through per interval, and the \
     interval: `#[rate_limit(100, per = Duration::from_secs(1))]` (a count, or the path of a `const u32`; a \
     `std::time::Duration`)";

/// The count and the interval of `#[rate_limit(n, per = duration)]`.
fn parse_rate_limit(input: ParseStream<'_>) -> syn::Result<(Count, Option<syn::Expr>)> {
    let count = parse_count(input, RATE_LIMIT)?;
    if input.is_empty() {
        return Ok((count, None));
    }
    input.parse::<Token![,]>()?;
    let key: Ident = input.parse().map_err(|e| syn::Error::new(e.span(), RATE_LIMIT))?;
    if key != "per" {
        return Err(syn::Error::new(key.span(), RATE_LIMIT));
    }
    input.parse::<Token![=]>()?;
    let per: syn::Expr = input.parse()?;
    if !input.is_empty() {
        input.parse::<Option<Token![,]>>()?;
        if !input.is_empty() {
            return Err(syn::Error::new(input.span(), RATE_LIMIT));
        }
    }
    Ok((count, Some(per)))
}

const BATCH: &str = "`#[batch(..)]` takes the most items in a batch and how long the oldest item of a batch \
     waits for more: `#[batch(size = 100, timeout = Duration::from_millis(50))]` (a count, or the path of a \
     `const usize`; a `std::time::Duration`)";

/// `size = n` and `timeout = duration`, in any order, each at most once.
fn parse_batch(input: ParseStream<'_>) -> syn::Result<(Option<Count>, Option<syn::Expr>)> {
    let (mut size, mut timeout) = (None, None);
    while !input.is_empty() {
        let key: Ident = input.parse().map_err(|e| syn::Error::new(e.span(), BATCH))?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(key.span(), BATCH));
        }
        input.parse::<Token![=]>()?;
        if key == "size" && size.is_none() {
            size = Some(parse_count(input, BATCH)?);
        } else if key == "timeout" && timeout.is_none() {
            timeout = Some(input.parse::<syn::Expr>()?);
        } else if key == "size" || key == "timeout" {
            return Err(syn::Error::new(key.span(), format_args!("duplicate `{key}` in `#[batch(..)]`")));
        } else {
            return Err(syn::Error::new(key.span(), format_args!("unknown `#[batch(..)]` option `{key}`; {BATCH}")));
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok((size, timeout))
}

impl Parse for Count {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitInt) {
            return Ok(Count::Lit(input.parse()?));
        }
        if input.peek(Ident) || input.peek(Token![::]) || input.peek(Token![crate]) || input.peek(Token![self]) {
            let fork = input.fork();
            if let Ok(path) = fork.parse::<Path>() {
                if fork.is_empty() || fork.peek(Token![,]) {
                    input.advance_to(&fork);
                    return Ok(Count::Const(path));
                }
            }
        }
        let unknown: proc_macro2::TokenTree = input.parse()?;
        Err(syn::Error::new(unknown.span(), format_args!("unknown replicas option `{unknown}`; {REPLICA_OPTIONS}")))
    }
}

impl Parse for ReplicaOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(kw::partition_by) {
            let key: kw::partition_by = input.parse()?;
            if !input.peek(Token![=]) {
                return Ok(ReplicaOption::PartitionBy(key, None));
            }
            input.parse::<Token![=]>()?;
            if input.is_empty() || input.peek(Token![,]) {
                return Ok(ReplicaOption::PartitionBy(key, None));
            }
            let path: Path = input
                .parse()
                .map_err(|e| syn::Error::new(e.span(), "expected the path of a key function, such as `Item::key`"))?;
            return Ok(ReplicaOption::PartitionBy(key, Some(path)));
        }
        if input.peek(kw::ordered) {
            let ordered: kw::ordered = input.parse()?;
            return Ok(ReplicaOption::Ordered(ordered.span));
        }
        if input.peek(LitInt) {
            return Ok(ReplicaOption::Count(input.parse()?));
        }
        let unknown: proc_macro2::TokenTree = input.parse()?;
        Err(syn::Error::new(unknown.span(), format_args!("unknown replicas option `{unknown}`; {REPLICA_OPTIONS}")))
    }
}
