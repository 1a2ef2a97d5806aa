//! A deterministic generator of web access-log lines.
//!
//! Lines are in nginx's *combined* log format followed by `$request_time`
//! (seconds, millisecond resolution), the way many sites configure it:
//!
//! ```text
//! 203.0.113.7 - - [10/Mar/2024:13:55:36 +0000] "GET /api/v1/users/123/orders/456 HTTP/1.1" 200 1534 "https://shop.example.com/" "Mozilla/5.0 (...)" 0.042
//! ```
//!
//! The traffic imitates a small online shop over one day: a weighted mix of
//! pages, static assets and API endpoints with ids, UUIDs and hex
//! fingerprints in their paths, each with its own latency, size and error
//! profile; browsers, phones, crawlers and scripts; a daily rhythm with a
//! quiet night and a busy evening. About 0.5% of the lines are malformed on
//! purpose (truncated writes, TLS handshakes sent to the plain-HTTP port,
//! error-log lines mixed in, blank lines).
//!
//! Everything comes from one seeded [`SplitMix64`], so the same seed and line
//! count always give the same lines, and lines are made one at a time, on
//! demand: [`access_log`] is an [`Iterator`], [`access_log_stream`] a lazy
//! [`Stream`].

use std::fmt::Write as _;

use futures::Stream;

/// The seed used when none is given.
pub(crate) const DEFAULT_SEED: u64 = 0x1095_5EED;

/// Midnight UTC at the start of the generated day (2024-03-10).
const DAY_START: i64 = 1_710_028_800;

/// `count` generated lines, made one at a time.
pub(crate) fn access_log(count: u64, seed: u64) -> AccessLog {
    AccessLog { rng: SplitMix64(seed), next: 0, count }
}

/// The same lines as [`access_log`], as a lazy stream.
pub(crate) fn access_log_stream(count: u64, seed: u64) -> impl Stream<Item = String> + Send + 'static {
    futures::stream::iter(access_log(count, seed))
}

/// The SplitMix64 pseudo-random generator: tiny, fast and good enough for
/// test data.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `1..=n`, small ones far more likely than large ones.
    fn skewed(&mut self, n: u64) -> u64 {
        let bound = 1 + self.below(n);
        1 + self.below(bound)
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A standard normal sample (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // in (0, 1]: ln is finite
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A log-normal sample with the given median and spread.
    fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// An item of `items`, with probability proportional to its weight.
    fn pick_by<'a, T>(&mut self, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
        let total: u64 = items.iter().map(|item| u64::from(weight(item))).sum();
        let mut ticket = self.below(total);
        for item in items {
            match ticket.checked_sub(u64::from(weight(item))) {
                Some(rest) => ticket = rest,
                None => return item,
            }
        }
        unreachable!("the ticket is below the total weight")
    }

    /// The first element of a `(value, weight)` pair of `table`, with
    /// probability proportional to its weight.
    fn pick<'a, T>(&mut self, table: &'a [(T, u32)]) -> &'a T {
        &self.pick_by(table, |(_, weight)| *weight).0
    }
}

/// One kind of request the site serves.
struct Endpoint {
    method: &'static str,
    /// The path, with placeholders `{id}`, `{uuid}`, `{hex}`, `{page}` and
    /// `{word}` filled in for each request.
    path: &'static str,
    /// How often it is requested, relative to the others.
    weight: u32,
    /// Median response time, in milliseconds.
    latency_ms: f64,
    /// Median response size, in bytes.
    bytes: f64,
    /// The statuses it answers with, weighted.
    statuses: &'static [(u16, u32)],
}

const OK: &[(u16, u32)] = &[(200, 9_980), (500, 15), (503, 5)];
const ASSET: &[(u16, u32)] = &[(200, 7_000), (304, 2_990), (404, 10)];
const BY_ID: &[(u16, u32)] = &[(200, 9_700), (404, 250), (500, 30), (503, 20)];
const PRIVATE: &[(u16, u32)] = &[(200, 9_500), (401, 300), (403, 150), (500, 50)];
const CREATE: &[(u16, u32)] = &[(201, 9_400), (400, 400), (409, 100), (500, 100)];
const LOGIN: &[(u16, u32)] = &[(201, 8_600), (401, 1_300), (429, 80), (500, 20)];
const CHECKOUT: &[(u16, u32)] = &[(201, 9_200), (402, 350), (500, 150), (502, 200), (504, 100)];
const SEARCH: &[(u16, u32)] = &[(200, 9_850), (400, 50), (504, 100)];
const DELETE: &[(u16, u32)] = &[(204, 9_600), (404, 350), (500, 50)];
const PROBE: &[(u16, u32)] = &[(404, 1)];
const HEALTH: &[(u16, u32)] = &[(200, 1)];

#[rustfmt::skip]
const ENDPOINTS: &[Endpoint] = &[
    Endpoint { method: "GET",    path: "/",                                weight: 60,  latency_ms: 14.0,  bytes: 18_400.0,  statuses: OK },
    Endpoint { method: "HEAD",   path: "/",                                weight: 4,   latency_ms: 3.0,   bytes: 0.0,       statuses: OK },
    Endpoint { method: "GET",    path: "/products/{id}",                   weight: 45,  latency_ms: 22.0,  bytes: 31_000.0,  statuses: BY_ID },
    Endpoint { method: "GET",    path: "/static/js/app.{hex}.js",          weight: 70,  latency_ms: 1.6,   bytes: 241_000.0, statuses: ASSET },
    Endpoint { method: "GET",    path: "/static/css/main.{hex}.css",       weight: 60,  latency_ms: 1.2,   bytes: 48_200.0,  statuses: ASSET },
    Endpoint { method: "GET",    path: "/images/products/{id}/thumb.webp", weight: 130, latency_ms: 2.8,   bytes: 21_500.0,  statuses: ASSET },
    Endpoint { method: "GET",    path: "/favicon.ico",                     weight: 20,  latency_ms: 0.6,   bytes: 4_286.0,   statuses: ASSET },
    Endpoint { method: "GET",    path: "/robots.txt",                      weight: 4,   latency_ms: 0.5,   bytes: 118.0,     statuses: OK },
    Endpoint { method: "GET",    path: "/api/v1/products?page={page}",     weight: 70,  latency_ms: 38.0,  bytes: 9_600.0,   statuses: OK },
    Endpoint { method: "GET",    path: "/api/v1/products/{id}",            weight: 110, latency_ms: 17.0,  bytes: 2_400.0,   statuses: BY_ID },
    Endpoint { method: "GET",    path: "/api/v1/products/{id}/reviews",    weight: 40,  latency_ms: 46.0,  bytes: 6_800.0,   statuses: BY_ID },
    Endpoint { method: "GET",    path: "/api/v1/search?q={word}",          weight: 50,  latency_ms: 85.0,  bytes: 12_000.0,  statuses: SEARCH },
    Endpoint { method: "GET",    path: "/api/v1/users/{id}",               weight: 45,  latency_ms: 12.0,  bytes: 1_100.0,   statuses: PRIVATE },
    Endpoint { method: "GET",    path: "/api/v1/users/{id}/orders",        weight: 30,  latency_ms: 64.0,  bytes: 5_200.0,   statuses: PRIVATE },
    Endpoint { method: "GET",    path: "/api/v1/users/{id}/orders/{id}",   weight: 25,  latency_ms: 24.0,  bytes: 2_900.0,   statuses: PRIVATE },
    Endpoint { method: "PUT",    path: "/api/v1/users/{id}/settings",      weight: 5,   latency_ms: 35.0,  bytes: 420.0,     statuses: PRIVATE },
    Endpoint { method: "PATCH",  path: "/api/v1/orders/{id}",              weight: 3,   latency_ms: 41.0,  bytes: 610.0,     statuses: PRIVATE },
    Endpoint { method: "POST",   path: "/api/v1/cart/items",               weight: 30,  latency_ms: 29.0,  bytes: 350.0,     statuses: CREATE },
    Endpoint { method: "DELETE", path: "/api/v1/cart/items/{id}",          weight: 8,   latency_ms: 19.0,  bytes: 0.0,       statuses: DELETE },
    Endpoint { method: "POST",   path: "/api/v1/checkout",                 weight: 10,  latency_ms: 420.0, bytes: 900.0,     statuses: CHECKOUT },
    Endpoint { method: "GET",    path: "/api/v1/sessions/{uuid}",          weight: 35,  latency_ms: 5.0,   bytes: 640.0,     statuses: PRIVATE },
    Endpoint { method: "POST",   path: "/api/v1/sessions",                 weight: 12,  latency_ms: 140.0, bytes: 700.0,     statuses: LOGIN },
    Endpoint { method: "GET",    path: "/downloads/{hex}/invoice.pdf",     weight: 3,   latency_ms: 260.0, bytes: 180_000.0, statuses: PRIVATE },
    Endpoint { method: "GET",    path: "/healthz",                         weight: 25,  latency_ms: 0.4,   bytes: 2.0,       statuses: HEALTH },
    Endpoint { method: "GET",    path: "/wp-login.php",                    weight: 2,   latency_ms: 0.9,   bytes: 153.0,     statuses: PROBE },
    Endpoint { method: "GET",    path: "/.env",                            weight: 1,   latency_ms: 0.7,   bytes: 153.0,     statuses: PROBE },
];

/// Who sends requests, as user-agent strings, weighted.
const AGENTS: &[(&str, u32)] = &[
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
        300,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
        120,
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0", 50),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0", 30),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Safari/605.1.15",
        60,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36 Edg/122.0.0.0",
        50,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
        150,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.6261.90 Mobile Safari/537.36",
        120,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
        20,
    ),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 30),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 15),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", 10),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)", 5),
    ("curl/8.4.0", 15),
    ("python-requests/2.31.0", 15),
    ("Go-http-client/1.1", 10),
    ("Wget/1.21.4", 3),
    ("-", 2),
];

const REFERERS: &[(&str, u32)] = &[
    ("-", 50),
    ("https://shop.example.com/", 20),
    ("https://shop.example.com/products", 15),
    ("https://www.google.com/", 10),
    ("https://duckduckgo.com/", 2),
    ("https://www.instagram.com/", 3),
];

const WORDS: &[&str] =
    &["shoes", "red+dress", "backpack", "usb-c+cable", "coffee", "lamp", "gift+card", "socks", "tent", "watch"];

/// Relative traffic in each hour of the day, UTC: a quiet night, a busy
/// evening.
const HOURLY: [u32; 24] = [4, 3, 2, 2, 2, 3, 5, 8, 11, 13, 14, 15, 16, 15, 14, 14, 15, 16, 18, 20, 19, 15, 10, 6];

/// The share of malformed lines.
const MALFORMED: f64 = 0.005;

/// The generated lines; see the [module documentation](self).
#[derive(Clone, Debug)]
pub(crate) struct AccessLog {
    rng: SplitMix64,
    next: u64,
    count: u64,
}

impl Iterator for AccessLog {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.next == self.count {
            return None;
        }
        let time = DAY_START + time_of_day(self.next as f64 / self.count as f64);
        self.next += 1;
        let rng = &mut self.rng;
        Some(if rng.chance(MALFORMED) { malformed_line(rng, time) } else { line(rng, time) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.count - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

/// Seconds after midnight for the request at `fraction` (0..1) of the log,
/// following the daily rhythm of [`HOURLY`]: timestamps only go up, and busy
/// hours hold more lines.
fn time_of_day(fraction: f64) -> i64 {
    let total: u32 = HOURLY.iter().sum();
    let mut remaining = fraction * f64::from(total);
    for (hour, &weight) in HOURLY.iter().enumerate() {
        let weight = f64::from(weight);
        if remaining < weight {
            return hour as i64 * 3600 + (remaining / weight * 3600.0) as i64;
        }
        remaining -= weight;
    }
    24 * 3600 - 1
}

/// One well-formed line.
fn line(rng: &mut SplitMix64, time: i64) -> String {
    let endpoint = rng.pick_by(ENDPOINTS, |endpoint| endpoint.weight);
    let agent = *rng.pick(AGENTS);
    let status = *rng.pick(endpoint.statuses);

    let mut latency_ms = rng.log_normal(endpoint.latency_ms, 0.6);
    if rng.chance(0.01) {
        latency_ms *= 5.0 + 15.0 * rng.unit(); // a slow outlier: lock, GC pause, cold cache
    }
    if status == 504 {
        latency_ms = 30_000.0 + rng.log_normal(20.0, 1.0); // the upstream timed out
    } else if status >= 500 {
        latency_ms *= 3.0;
    }
    let bytes = match status {
        204 | 304 => 0,
        _ if endpoint.method == "HEAD" => 0,
        400..=599 => 150 + rng.below(40),
        _ => rng.log_normal(endpoint.bytes, 0.25) as u64,
    };
    let referer = if agent.starts_with("Mozilla/5.0 (compatible") || !agent.starts_with("Mozilla") {
        "-"
    } else {
        *rng.pick(REFERERS)
    };

    let mut out = String::with_capacity(256);
    write_client(&mut out, rng, agent);
    out.push_str(" - - [");
    write_timestamp(&mut out, time);
    let _ = write!(out, "] \"{} ", endpoint.method);
    write_path(&mut out, rng, endpoint.path);
    let millis = latency_ms.round() as u64;
    let _ =
        write!(out, " HTTP/1.1\" {status} {bytes} \"{referer}\" \"{agent}\" {}.{:03}", millis / 1000, millis % 1000);
    out
}

/// A client address: crawlers come from their operators' ranges, everyone
/// else from a pool of addresses where a few clients send much of the
/// traffic; one in twenty is IPv6.
fn write_client(out: &mut String, rng: &mut SplitMix64, agent: &str) {
    if agent.contains("Googlebot") {
        let _ = write!(out, "66.249.66.{}", 1 + rng.below(200));
        return;
    }
    if agent.contains("bingbot") {
        let _ = write!(out, "40.77.167.{}", 1 + rng.below(200));
        return;
    }
    // Skewed towards low client numbers: a few heavy users, a long tail.
    let heavy_users = 1 + rng.below(50_000);
    let client = rng.below(heavy_users);
    let bits = SplitMix64(client).next_u64();
    if bits % 20 == 0 {
        let _ =
            write!(out, "2001:db8:{:x}:{:x}::{:x}", (bits >> 8) & 0xffff, (bits >> 24) & 0xffff, (bits >> 40) & 0xfff);
    } else {
        let first = [23, 31, 46, 62, 77, 81, 89, 94, 104, 141, 176, 185, 188, 203, 212, 217][(bits & 15) as usize];
        let _ = write!(out, "{first}.{}.{}.{}", (bits >> 8) & 0xff, (bits >> 16) & 0xff, 1 + (bits >> 24) % 254);
    }
}

/// The path with its placeholders filled in.
fn write_path(out: &mut String, rng: &mut SplitMix64, template: &str) {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("placeholders are closed");
        match &rest[start + 1..end] {
            // Popular ids are requested far more often than the rest.
            "id" => {
                let _ = write!(out, "{}", rng.skewed(100_000));
            }
            "page" => {
                let _ = write!(out, "{}", rng.skewed(40));
            }
            "word" => out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]),
            "hex" => {
                let _ = write!(out, "{:012x}", rng.next_u64() >> 16);
            }
            "uuid" => {
                let (a, b) = (rng.next_u64(), rng.next_u64());
                let _ = write!(
                    out,
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    0x8000 | (b >> 48) & 0x3fff,
                    b & 0xffff_ffff_ffff
                );
            }
            other => unreachable!("unknown placeholder {{{other}}}"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
}

/// `10/Mar/2024:13:55:36 +0000` for a Unix time.
fn write_timestamp(out: &mut String, time: i64) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (year, month, day) = civil_from_days(time.div_euclid(86_400));
    let seconds = time.rem_euclid(86_400);
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
}

/// The proleptic Gregorian date of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A line a log parser must reject, of the kinds real access logs contain.
fn malformed_line(rng: &mut SplitMix64, time: i64) -> String {
    match rng.below(5) {
        // Cut short by a crash or a full disk, somewhere before the end of
        // the request.
        0 | 1 => {
            let mut full = line(rng, time);
            let request_end = full.find("HTTP/1.1\"").unwrap_or(full.len());
            full.truncate(8 + rng.below(request_end as u64 - 8) as usize);
            full
        }
        // A TLS handshake sent to the plain-HTTP port, as nginx logs it.
        2 => {
            let mut out = String::with_capacity(160);
            write_client(&mut out, rng, "-");
            out.push_str(" - - [");
            write_timestamp(&mut out, time);
            out.push_str(r#"] "\x16\x03\x01\x02\x00\x01\x00\x01\xFC\x03\x03" 400 157 "-" "-" 0.001"#);
            out
        }
        // An error-log line written to the wrong file.
        3 => {
            let (year, month, day) = civil_from_days(time.div_euclid(86_400));
            let seconds = time.rem_euclid(86_400);
            format!(
                "{year}/{month:02}/{day:02} {:02}:{:02}:{:02} [error] 1234#1234: *{} upstream timed out (110: Connection \
                 timed out) while reading response header from upstream",
                seconds / 3600,
                seconds / 60 % 60,
                seconds % 60,
                rng.below(10_000_000)
            )
        }
        // A blank line.
        _ => String::new(),
    }
}
