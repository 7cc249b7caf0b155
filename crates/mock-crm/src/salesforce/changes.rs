//! `GET .../sobjects/Contact/changes?since=MS&after_id=ID&limit=N`: the
//! contacts changed after a cursor, for pollers. The cursor is the pair
//! (`LastModifiedDate`, `Id`) of the last record seen, so a page boundary
//! inside a run of records sharing one modification time loses and repeats
//! nothing (the trap of paging by time alone). Deleted contacts come as
//! tombstones (`"IsDeleted": true`).
//!
//! A change committed late, with a modification time before the cursor, is
//! not returned: pollers need a lookback window for those, as with the real
//! APIs.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{Salesforce, SalesforceApi, errors};
use crate::reply::Reply;
use crate::request::ApiRequest;

const DEFAULT_LIMIT: usize = 200;
const MAX_LIMIT: usize = 2000;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangesQuery {
    /// Milliseconds since the Unix epoch; 0 when absent (everything).
    #[serde(default)]
    since: u64,
    /// With `since`, the `Id` of the last record seen at that time.
    #[serde(default)]
    after_id: String,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn changes(State(api): SalesforceApi, request: ApiRequest) -> Response {
    let query = parse(&request.uri);
    api.serve_parsed(request, query, |salesforce, query| {
        salesforce.changes(&query)
    })
    .await
}

fn parse(uri: &axum::http::Uri) -> Result<ChangesQuery, Reply> {
    let refuse =
        |message: String| errors(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message, &[]);
    let Query(query) = Query::<ChangesQuery>::try_from_uri(uri).map_err(|e| {
        refuse(format!(
            "expected since=MS&after_id=ID&limit=1..{MAX_LIMIT}: {e}"
        ))
    })?;
    if query
        .limit
        .is_some_and(|limit| !(1..=MAX_LIMIT).contains(&limit))
    {
        return Err(refuse(format!("limit must be within 1..={MAX_LIMIT}")));
    }
    Ok(query)
}

impl Salesforce {
    /// `{"records": [...], "done": bool}`: at most `limit` contacts after the
    /// cursor, sorted by (`LastModifiedDate`, `Id`); done when none are left.
    fn changes(&self, query: &ChangesQuery) -> Reply {
        let cursor = (query.since, query.after_id.as_str());
        let mut after: Vec<_> = self
            .contacts
            .iter()
            .filter(|(id, contact)| (contact.last_modified, id.as_str()) > cursor)
            .collect();
        after.sort_unstable_by(|(a_id, a), (b_id, b)| {
            (a.last_modified, a_id).cmp(&(b.last_modified, b_id))
        });
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        let done = after.len() <= limit;
        let records: Vec<_> = after
            .into_iter()
            .take(limit)
            .map(|(id, contact)| contact.to_json(id))
            .collect();
        Reply::json(StatusCode::OK, &json!({"records": records, "done": done}))
    }
}

#[cfg(test)]
mod tests {
    use reqwest::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::MockCrmConfig;
    use crate::salesforce::CONTACT_PATH;
    use crate::test_support::{Harness, TOKEN, send};

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn queries_take_defaults_and_refuse_limits_and_typos() {
        let uri = |query: &str| format!("/x?{query}").parse::<axum::http::Uri>().unwrap();
        assert_eq!(
            parse(&uri("")).ok(),
            Some(ChangesQuery {
                since: 0,
                after_id: String::new(),
                limit: None
            })
        );
        assert_eq!(
            parse(&uri("since=5&after_id=003a&limit=2000")).ok(),
            Some(ChangesQuery {
                since: 5,
                after_id: "003a".into(),
                limit: Some(2000)
            })
        );
        for bad in ["limit=0", "limit=2001", "since=-1", "since=x", "sinse=1"] {
            let refusal = parse(&uri(bad)).expect_err(bad);
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(refusal.body_json()[0]["errorCode"], "MALFORMED_QUERY");
        }
    }

    /// One page after the cursor (`since`, `after_id`).
    async fn page(h: &Harness, since: u64, after_id: &str, limit: usize) -> (Vec<Value>, bool) {
        let path =
            format!("{CONTACT_PATH}/changes?since={since}&after_id={after_id}&limit={limit}");
        let (status, body) = send(h.salesforce(Method::GET, &path)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let records = body["records"].as_array().unwrap().clone();
        (records, body["done"].as_bool().unwrap())
    }

    fn cursor(record: &Value) -> (u64, String) {
        (
            record["LastModifiedDate"].as_u64().unwrap(),
            record["Id"].as_str().unwrap().to_owned(),
        )
    }

    async fn create(h: &Harness, fields: Value) -> String {
        let (status, created) = send(h.salesforce(Method::POST, CONTACT_PATH).json(&fields)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn pages_through_records_sharing_one_modification_time() {
        let h = Harness::start(MockCrmConfig::default()).await;
        h.crm.set_salesforce_clock(Some(T));
        let mut created = Vec::new();
        for i in 0..5 {
            created.push(create(&h, json!({"LastName": format!("Same {i}")})).await);
        }
        h.crm.set_salesforce_clock(Some(T + 1));
        for i in 0..2 {
            created.push(create(&h, json!({"LastName": format!("Later {i}")})).await);
        }

        let (mut since, mut after_id) = (0, String::new());
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        loop {
            let (records, done) = page(&h, since, &after_id, 2).await;
            pages.push((records.len(), done));
            for record in &records {
                assert_eq!(record["IsDeleted"], false);
                seen.push(cursor(record));
            }
            if let Some(last) = records.last() {
                (since, after_id) = cursor(last);
            }
            if done {
                break;
            }
        }
        assert_eq!(pages, [(2, false), (2, false), (2, false), (1, true)]);
        let mut expected: Vec<_> = created
            .iter()
            .enumerate()
            .map(|(i, id)| (if i < 5 { T } else { T + 1 }, id.clone()))
            .collect();
        expected.sort();
        assert_eq!(seen, expected);

        // Past the end: nothing more, done.
        assert_eq!(page(&h, since, &after_id, 2).await, (vec![], true));
        // A page holding exactly what is left is the last.
        let (records, done) = page(&h, 0, "", 7).await;
        assert_eq!((records.len(), done), (7, true));
        let (records, done) = page(&h, 0, "", 6).await;
        assert_eq!((records.len(), done), (6, false));
    }

    #[tokio::test]
    async fn a_late_commit_lands_behind_the_cursor_and_a_lookback_finds_it() {
        let h = Harness::start(MockCrmConfig::default()).await;
        h.crm.set_salesforce_clock(Some(T));
        let early = create(&h, json!({"LastName": "Early"})).await;
        h.crm.set_salesforce_clock(Some(T + 10_000));
        create(&h, json!({"LastName": "Late"})).await;
        let (records, done) = page(&h, 0, "", 200).await;
        assert!(done);
        let (since, after_id) = cursor(records.last().unwrap());
        assert_eq!(since, T + 10_000);

        // A user's change committed late: it carries a time before the cursor.
        h.crm
            .salesforce_user_update(&early, json!({"Title": "CEO"}), Some(T + 5_000))
            .unwrap();
        assert_eq!(page(&h, since, &after_id, 200).await, (vec![], true));
        let (records, _) = page(&h, since - 6_000, "", 200).await;
        let found = records.iter().find(|r| r["Id"] == early.as_str()).unwrap();
        assert_eq!(
            (&found["Title"], &found["LastModifiedDate"]),
            (&json!("CEO"), &json!(T + 5_000))
        );
    }

    #[tokio::test]
    async fn deletes_leave_tombstones_for_pollers_only() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let upsert = format!("{CONTACT_PATH}/Internal_Id__c/ext-1");
        let (status, created) = send(
            h.salesforce(Method::PATCH, &upsert)
                .json(&json!({"LastName": "Doe"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = created["id"].as_str().unwrap().to_owned();
        let contact = format!("{CONTACT_PATH}/{id}");
        let (status, read) = send(h.salesforce(Method::GET, &contact)).await;
        assert_eq!(status, StatusCode::OK);
        let modified = read["LastModifiedDate"].as_u64().unwrap();
        assert_eq!(
            (&read["Id"], &read["IsDeleted"]),
            (&json!(id), &json!(false))
        );

        assert_eq!(
            send(h.salesforce(Method::DELETE, &contact)).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            send(h.salesforce(Method::GET, &contact)).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            send(h.salesforce(Method::DELETE, &contact)).await.0,
            StatusCode::NOT_FOUND
        );
        assert!(h.crm.snapshot().salesforce.records.is_empty());
        let (records, _) = page(&h, 0, "", 200).await;
        assert_eq!(records.len(), 1);
        let tombstone = &records[0];
        assert_eq!(
            (
                &tombstone["IsDeleted"],
                &tombstone["LastName"],
                &tombstone["Internal_Id__c"]
            ),
            (&json!(true), &json!("Doe"), &json!("ext-1"))
        );
        assert!(tombstone["LastModifiedDate"].as_u64().unwrap() >= modified);

        // The external id is free again: an upsert creates a new contact.
        let (status, again) = send(
            h.salesforce(Method::PATCH, &upsert)
                .json(&json!({"LastName": "Roe"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_ne!(again["id"], json!(id));
        let counters = h.crm.snapshot().salesforce.counters;
        assert_eq!((counters.api_writes, counters.user_writes), (3, 0));
    }

    #[tokio::test]
    async fn every_api_update_moves_last_modified_and_echoes_count_as_noops() {
        let h = Harness::start(MockCrmConfig::default()).await;
        h.crm.set_salesforce_clock(Some(T));
        let id = create(&h, json!({"LastName": "Doe", "Title": null})).await;
        h.crm.set_salesforce_clock(Some(T + 1));
        let contact = format!("{CONTACT_PATH}/{id}");
        // Same values (and a null for an absent field): an echo.
        let echo = json!({"LastName": "Doe", "Phone": null});
        assert_eq!(
            send(h.salesforce(Method::PATCH, &contact).json(&echo))
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let (_, read) = send(h.salesforce(Method::GET, &contact)).await;
        assert_eq!(read["LastModifiedDate"], T + 1);
        let upsert = format!("{CONTACT_PATH}/Internal_Id__c/none");
        let change = json!({"LastName": "Roe"});
        assert_eq!(
            send(h.salesforce(Method::PATCH, &contact).json(&change))
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            send(h.salesforce(Method::PATCH, &upsert).json(&change))
                .await
                .0,
            StatusCode::CREATED
        );
        let counters = h.crm.snapshot().salesforce.counters;
        assert_eq!((counters.api_writes, counters.api_noop_writes), (4, 1));
    }

    #[tokio::test]
    async fn the_changes_query_goes_through_auth_and_is_counted() {
        let h = Harness::start(MockCrmConfig {
            token: Some(TOKEN.into()),
            ..MockCrmConfig::default()
        })
        .await;
        let path = format!("/salesforce{CONTACT_PATH}/changes");
        let (status, body) = send(h.root(Method::GET, &path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
        let (status, body) =
            send(h.salesforce(Method::GET, &format!("{CONTACT_PATH}/changes?limit=5000"))).await;
        assert_eq!(
            (status, &body[0]["errorCode"]),
            (StatusCode::BAD_REQUEST, &json!("MALFORMED_QUERY"))
        );
        assert_eq!(page(&h, 0, "", 200).await, (vec![], true));
        let counters = h.crm.snapshot().salesforce.counters;
        assert_eq!(
            (
                counters.count("GET", 401),
                counters.count("GET", 400),
                counters.count("GET", 200)
            ),
            (1, 1, 1)
        );
    }
}
