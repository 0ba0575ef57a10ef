//! The operator console: server-rendered pages on the operations listener, for the people
//! who run a sale. Sign in with the admin token or an admin's JWT; list and create sales;
//! watch one live; pause, resume and raise it; replay or discard failed events. Every
//! action calls what the admin API's route calls, and is logged with who did it.
//!
//! Never on the public listener (`crate::app` mounts it on the operations one only). Pages
//! work without JavaScript; htmx (vendored, `console/VENDORED.md`) only refreshes the live
//! parts, at most once a second, from what the operations refresher already read.

mod pages;
pub mod session;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};

pub use session::{SecureCookie, Sessions};

/// htmx, compiled in; its version is in its path, so a browser may keep it for good.
pub const HTMX: &str = "htmx-2.0.11.min.js";
const HTMX_JS: &[u8] = include_bytes!("../../console/htmx.min.js");
const CSS: &[u8] = include_bytes!("../../console/console.css");
const FAVICON: &[u8] = include_bytes!("../../console/favicon.svg");

/// Scripts and styles from this origin only (no inline script or style, no eval); no
/// framing, no form posted elsewhere, nothing fetched from another origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, under `/console`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::X_FRAME_OPTIONS, "DENY")),
            )
            .app_data(web::FormConfig::default().error_handler(pages::form_refused))
            .route("", web::get().to(pages::home))
            .route("/", web::get().to(pages::home))
            .route("/sign-in", web::get().to(pages::sign_in_page))
            .route("/sign-in", web::post().to(pages::sign_in))
            .route("/sign-out", web::post().to(pages::sign_out))
            .route("/sales", web::get().to(pages::sales))
            .route("/sales", web::post().to(pages::create_sale))
            .route("/sales/rows", web::get().to(pages::sales_rows))
            .route("/sales/new", web::get().to(pages::new_sale))
            .route("/sales/{couponId}", web::get().to(pages::sale))
            .route("/sales/{couponId}/live", web::get().to(pages::sale_live))
            .route(
                "/sales/{couponId}/paused",
                web::post().to(pages::set_paused),
            )
            .route(
                "/sales/{couponId}/quantity",
                web::post().to(pages::raise_quantity),
            )
            .route("/sales/{couponId}/end", web::post().to(pages::move_end))
            .route("/failed-events", web::get().to(pages::failed_events))
            .route("/failed-events/{id}/replay", web::post().to(pages::replay))
            .route(
                "/failed-events/{id}/discard",
                web::post().to(pages::discard),
            )
            .route(&format!("/static/{HTMX}"), web::get().to(htmx))
            .route("/static/console.css", web::get().to(css))
            .route("/static/favicon.svg", web::get().to(favicon))
            .default_service(web::to(pages::not_found)),
    );
}

async fn htmx() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ))
        .body(HTMX_JS)
}

async fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(FAVICON)
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(CSS)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn the_vendored_htmx_is_the_one_recorded() {
        let hash: String = Sha256::digest(super::HTMX_JS)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let recorded = include_str!("../../console/VENDORED.md");
        assert!(
            recorded.contains(&hash),
            "console/htmx.min.js's sha256 {hash} is not the one console/VENDORED.md records"
        );
        assert!(
            recorded.contains(
                super::HTMX
                    .trim_start_matches("htmx-")
                    .trim_end_matches(".min.js")
            )
        );
    }
}
