//! The OpenAPI document is the contract: it is served as kept in the repository, it names
//! exactly the routes the code registers, and the running API answers on each of them with
//! its documented method and 405 on every other.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use issuer_api::http::routes;
use serde_json::Value;
use testkit::harness::{self, TestEnv};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn document() -> Value {
    serde_json::from_str(include_str!("../openapi.json")).unwrap()
}

/// (path, method) pairs the document describes.
fn documented() -> BTreeSet<(String, String)> {
    let doc = document();
    let mut pairs = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
            pairs.insert((path.clone(), method.clone()));
        }
    }
    pairs
}

/// (path, method) pairs the code registers: its route tables, public and operations.
fn registered() -> BTreeSet<(String, String)> {
    routes::PUBLIC
        .iter()
        .chain(&routes::OPERATIONS)
        .map(|route| (route.path.to_owned(), route.method.as_str().to_lowercase()))
        .collect()
}

#[test]
fn the_document_names_exactly_the_registered_routes() {
    let (documented, registered) = (documented(), registered());
    assert_eq!(
        documented.difference(&registered).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not registered"
    );
    assert_eq!(
        registered.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "registered but not documented"
    );
}

#[actix_web::test]
async fn the_running_api_serves_the_document_and_each_route_as_documented() {
    let env = TestEnv::start(0).await;
    let (status, served) = env.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(served, document(), "the served document is the kept one");

    let paths: BTreeSet<String> = documented().into_iter().map(|(path, _)| path).collect();
    for path in paths {
        let concrete = path
            .replace("{couponId}", "987654321")
            .replace("{userId}", "1")
            .replace("{failedEventId}", "987654321");
        for method in METHODS {
            let mut response = env
                .client
                .request(method.to_uppercase().parse().unwrap(), env.url(&concrete))
                .bearer_auth(harness::ADMIN_TOKEN)
                .insert_header(("content-type", "application/json"))
                .send_body("{}")
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let status = response.status().as_u16();
            let is_documented = document()["paths"][&path][method].is_object();
            let where_ = format!("{method} {concrete}: {status} {body}");
            if is_documented {
                assert_ne!(status, 405, "{where_}");
                assert_ne!(body["error"], "NOT_FOUND", "{where_}");
                let documented_statuses = &document()["paths"][&path][method]["responses"];
                assert!(
                    documented_statuses[status.to_string()].is_object(),
                    "{where_}: status not in the document"
                );
            } else {
                assert_eq!(status, 405, "{where_}");
                let allow = response.headers().get("allow").map(|v| v.to_str().unwrap());
                let served: Vec<String> = document()["paths"][&path]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|m| m.to_uppercase())
                    .collect();
                assert_eq!(allow, Some(served.join(", ").as_str()), "{where_}: Allow");
            }
        }
    }
    env.shutdown().await;
}
