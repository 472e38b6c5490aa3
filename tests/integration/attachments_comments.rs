//! Attachments and comments (domain.md §7.6, §7.7, §13): every endpoint × method × role,
//! team scoping and private comments, upload limits and types, hostile client file names
//! (the upload directory gains exactly one server-named file or nothing), downloads with
//! their headers, files removed with their records — on both backends.

use crate::accounts::World;
use crate::common::http::Response;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROLES: [&str; 6] = ["ANON", "AUTH", "MB", "AD", "OW", "STAFF"];
const BOUNDARY: &str = "----keystone-test-boundary-7MA4YWxkTrZu0gW";

/// Allocation requests made directly in the database (the requests API is not under test):
/// request 1 belongs to the fixture's team, request 2 to a team none of the roles is in.
fn add_requests(w: &World) -> (i64, i64) {
    let other = w.call(
        "STAFF",
        "POST",
        "/users/teams/",
        Some(json!({"name": "Other Team"})),
    );
    assert_eq!(other.status, 201, "{}", other.text());
    let other = other.json()["id"].as_i64().expect("team id");
    let (team, mb) = (w.id("TEAM"), w.id("MB"));
    w.site.sql(&format!(
        "INSERT INTO allocations_allocationrequest (id, title, description, status, submitter_id, team_id) \
         VALUES (1, 'Request One', 'First', 'PD', {mb}, {team}); \
         INSERT INTO allocations_allocationrequest (id, title, description, status, submitter_id, team_id) \
         VALUES (2, 'Request Two', 'Second', 'AP', {mb}, {other});"
    ));
    (1, 2)
}

/// A multipart body: text fields, then optionally one `file` part whose Content-Disposition
/// carries `disposition` verbatim after `name="file"; ` (e.g. `filename="a.txt"`).
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((disposition, content)) = file {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; ");
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

fn send_multipart(
    w: &World,
    role: &str,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
    file: Option<(&str, &[u8])>,
) -> Response {
    let (content_type, body) = multipart(fields, file);
    let auth = w.tokens.get(role).map(|t| format!("Token {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", content_type.as_str())];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    w.web.request(method, path, &headers, &body)
}

/// Uploads `content` as `filename` (a plain quoted name) to a request.
fn upload(w: &World, role: &str, request: i64, filename: &str, content: &[u8]) -> Response {
    let disposition = format!("filename=\"{filename}\"");
    send_multipart(
        w,
        role,
        "POST",
        "/allocations/attachments/",
        &[("request", &request.to_string())],
        Some((&disposition, content)),
    )
}

fn upload_ok(w: &World, request: i64, filename: &str, content: &[u8]) -> Value {
    let r = upload(w, "STAFF", request, filename, content);
    assert_eq!(r.status, 201, "upload {filename}: {}", r.text());
    r.json()
}

fn media_dir(w: &World) -> PathBuf {
    w.site.path("state/media")
}

/// Every entry under the upload directory: relative path → (kind, content).
fn tree(root: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("link");
                out.insert(
                    rel,
                    ("symlink".into(), target.display().to_string().into_bytes()),
                );
            } else if meta.is_dir() {
                out.insert(rel, ("dir".into(), Vec::new()));
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    ("file".into(), std::fs::read(&path).expect("read file")),
                );
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The entries of `after` that `before` lacks, and whether anything else changed.
fn added(
    before: &BTreeMap<String, (String, Vec<u8>)>,
    after: &BTreeMap<String, (String, Vec<u8>)>,
) -> Vec<String> {
    for (k, v) in before {
        assert_eq!(after.get(k), Some(v), "{k} changed or vanished");
    }
    after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect()
}

/// A stored name is chosen by the server: 32 hex digits and a known extension.
fn assert_server_named(file: &str, ext: &str) {
    let name = file
        .strip_prefix("allocations/")
        .unwrap_or_else(|| panic!("{file} not under allocations/"));
    let (stem, e) = name.split_once('.').expect("extension");
    assert_eq!(e, ext, "{file}");
    assert!(
        stem.len() == 32 && stem.chars().all(|c| c.is_ascii_hexdigit()),
        "{file} is not a server-chosen name"
    );
}

fn expect_row(w: &World, method: &str, path: &str, body: Option<Value>, expected: [u16; 6]) {
    for (role, want) in ROLES.iter().zip(expected) {
        let r = w.call(role, method, path, body.clone());
        assert_eq!(r.status, want, "{method} {path} as {role}: {}", r.text());
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

#[test]
fn attachments_permission_matrix() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let (ra, rb) = add_requests(&w);
        let a = upload_ok(&w, ra, "plan.txt", b"the plan");
        let id = a["id"].as_i64().expect("id");
        let b = upload_ok(&w, rb, "other.txt", b"other team");
        let other = b["id"].as_i64().expect("id");

        let coll = "/allocations/attachments/";
        for method in ["GET", "HEAD", "OPTIONS"] {
            expect_row(&w, method, coll, None, [401, 200, 200, 200, 200, 200]);
        }
        for method in ["PUT", "PATCH", "DELETE", "TRACE"] {
            expect_row(&w, method, coll, None, [401, 405, 405, 405, 405, 405]);
        }
        for (role, want) in ROLES.iter().zip([401, 403, 403, 201, 201, 201]) {
            let r = upload(&w, role, ra, &format!("by-{role}.txt"), b"x");
            assert_eq!(r.status, want, "POST attachment as {role}: {}", r.text());
        }
        // Missing, garbled or unknown request: 403 for non-staff, 400 for staff.
        for fields in [vec![], vec![("request", "abc")], vec![("request", "999")]] {
            let r = send_multipart(
                &w,
                "AD",
                "POST",
                coll,
                &fields,
                Some(("filename=\"x.txt\"", b"x")),
            );
            assert_eq!(r.status, 403, "{fields:?}: {}", r.text());
        }
        let r = send_multipart(
            &w,
            "STAFF",
            "POST",
            coll,
            &[("request", "999")],
            Some(("filename=\"x.txt\"", b"x")),
        );
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json(),
            json!({"request": ["Invalid pk \"999\" - object does not exist."]})
        );
        // An admin of team A cannot attach to team B's request.
        assert_eq!(upload(&w, "AD", rb, "x.txt", b"x").status, 403);

        let item = format!("/allocations/attachments/{id}/");
        for method in ["GET", "HEAD"] {
            expect_row(&w, method, &item, None, [401, 403, 200, 200, 200, 200]);
        }
        expect_row(&w, "OPTIONS", &item, None, [401, 200, 200, 200, 200, 200]);
        for method in ["POST", "TRACE"] {
            expect_row(&w, method, &item, None, [401, 405, 405, 405, 405, 405]);
        }
        for role in ["ANON", "AUTH", "MB", "AD", "OW"] {
            let want = if role == "ANON" { 401 } else { 403 };
            for method in ["PUT", "PATCH", "DELETE"] {
                let r = w.call(role, method, &item, Some(json!({"name": "n.txt"})));
                assert_eq!(
                    r.status,
                    want,
                    "{method} attachment as {role}: {}",
                    r.text()
                );
            }
        }
        let r = w.call(
            "STAFF",
            "PATCH",
            &item,
            Some(json!({"name": "renamed.txt"})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = send_multipart(
            &w,
            "STAFF",
            "PUT",
            &item,
            &[("request", &ra.to_string())],
            Some(("filename=\"v2.txt\"", b"version two")),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // Downloads follow the record's read rule.
        for path in [
            format!("/allocations/attachments/{id}/download/"),
            format!("/media/{}/", r.json()["file"].as_str().expect("file")),
        ] {
            for method in ["GET", "HEAD"] {
                expect_row(&w, method, &path, None, [401, 403, 200, 200, 200, 200]);
            }
        }
        // Other team's attachment: found but refused; the lists leave it out.
        for role in ["AUTH", "MB", "AD", "OW"] {
            let path = format!("/allocations/attachments/{other}/");
            assert_eq!(w.call(role, "GET", &path, None).status, 403, "{role}");
            let path = format!("/allocations/attachments/{other}/download/");
            assert_eq!(w.call(role, "GET", &path, None).status, 403, "{role}");
        }
        assert_eq!(
            w.call(
                "STAFF",
                "GET",
                &format!("/allocations/attachments/{other}/"),
                None
            )
            .status,
            200
        );
        let mine = w.call("MB", "GET", coll, None).json();
        assert!(ids(&mine).contains(&id) && !ids(&mine).contains(&other));
        assert_eq!(w.call("AUTH", "GET", coll, None).json()["count"], 0);
        let all = w.call("STAFF", "GET", coll, None).json();
        assert!(ids(&all).contains(&id) && ids(&all).contains(&other));
        // Unknown ids and non-integers.
        let r = w.call("MB", "GET", "/allocations/attachments/99999/", None);
        assert_eq!(
            (r.status, r.json()),
            (
                404,
                json!({"detail": "No Attachment matches the given query."})
            )
        );
        let r = w.call("STAFF", "DELETE", "/allocations/attachments/99999/", None);
        assert_eq!(r.status, 404);
        let r = w.call("MB", "GET", "/allocations/attachments/abc/", None);
        assert_eq!((r.status, r.json()), (404, json!({"detail": "Not found."})));
        let r = w.call(
            "MB",
            "GET",
            "/allocations/attachments/99999/download/",
            None,
        );
        assert_eq!(r.status, 404);
        expect_row(&w, "DELETE", &item, None, [401, 403, 403, 403, 403, 204]);
        assert_eq!(w.call("STAFF", "GET", &item, None).status, 404);
    }
}

#[test]
fn attachments_representation_download_and_delete() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let (ra, _) = add_requests(&w);
        let content = b"%PDF-1.4 not really a pdf\n".to_vec();
        let before = tree(&media_dir(&w));
        let r = upload(&w, "AD", ra, "r\u{e9}sum\u{e9} final.pdf", &content);
        assert_eq!(r.status, 201, "{}", r.text());
        let a = r.json();
        let keys: Vec<&str> = a
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "id", "file", "name", "_request", "_history", "uploaded", "request"
            ]
        );
        let id = a["id"].as_i64().expect("id");
        let file = a["file"].as_str().expect("file").to_string();
        assert_server_named(&file, "pdf");
        assert_eq!(a["name"], "r\u{e9}sum\u{e9} final.pdf");
        assert_eq!(a["request"], ra);
        assert_eq!(
            a["_request"],
            json!({"id": ra, "title": "Request One", "status": "PD", "active": null, "expire": null})
        );
        let history = a["_history"].as_array().expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["action"], "create");
        assert_eq!(history[0]["actor"], w.id("AD"));
        assert_eq!(history[0]["changes"]["file"], json!(["None", file]));
        assert_eq!(
            history[0]["changes"]["request"],
            json!(["None", ra.to_string()])
        );
        // Exactly one new file, at the server-chosen name, with the uploaded bytes.
        let after = tree(&media_dir(&w));
        let new: Vec<String> = added(&before, &after)
            .into_iter()
            .filter(|p| after[p].0 == "file")
            .collect();
        assert_eq!(new, vec![file.clone()]);
        assert_eq!(after[&file].1, content);
        // The audit entry's text (operations.md §3.4).
        let repr = format!("\"Attachment #{id} - 'r\u{e9}sum\u{e9} final.pdf' on request #{ra}\"");
        let logs = w.call(
            "STAFF",
            "GET",
            &format!("/logs/audit/?_search={}", urlencode(&repr)),
            None,
        );
        assert_eq!(logs.json()["count"], 1, "{}", logs.text());

        // Download: content, type, RFC 6266 disposition; the media path serves the same.
        let dl = w.call(
            "MB",
            "GET",
            &format!("/allocations/attachments/{id}/download/"),
            None,
        );
        assert_eq!(dl.status, 200);
        assert_eq!(dl.body, content);
        assert_eq!(dl.header("content-type"), Some("application/pdf"));
        assert_eq!(
            dl.header("content-disposition"),
            Some(
                "attachment; filename=\"r_sum_ final.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf"
            )
        );
        assert_eq!(
            dl.header("content-security-policy"),
            Some("default-src 'none'; sandbox")
        );
        assert_eq!(dl.header("x-content-type-options"), Some("nosniff"));
        let head = w.call(
            "MB",
            "HEAD",
            &format!("/allocations/attachments/{id}/download/"),
            None,
        );
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        let media = w.call("OW", "GET", &format!("/media/{file}/"), None);
        assert_eq!((media.status, &media.body), (200, &content));
        let unslashed = w.call("OW", "GET", &format!("/media/{file}"), None);
        assert_eq!(unslashed.status, 301);
        assert_eq!(
            unslashed.header("location"),
            Some(format!("/media/{file}/").as_str())
        );
        assert_eq!(
            w.call("MB", "GET", "/media/allocations/nothing.pdf/", None)
                .status,
            404
        );

        // List conventions: search by name, filter by request, order by name.
        upload_ok(&w, ra, "zeta.txt", b"z");
        let page = w
            .call("MB", "GET", "/allocations/attachments/?_search=sum", None)
            .json();
        assert_eq!(ids(&page), vec![id]);
        let page = w
            .call(
                "MB",
                "GET",
                "/allocations/attachments/?_search=Request%20One",
                None,
            )
            .json();
        assert_eq!(page["count"], 2);
        let page = w
            .call(
                "MB",
                "GET",
                &format!("/allocations/attachments/?request={ra}&_order=-name"),
                None,
            )
            .json();
        assert_eq!(page["results"][0]["name"], "zeta.txt");
        let r = w.call("MB", "GET", "/allocations/attachments/?request=999", None);
        assert_eq!(r.status, 400);

        // PATCH keeps the file; PUT with a new file removes the replaced one from disk.
        let item = format!("/allocations/attachments/{id}/");
        let r = w.call("STAFF", "PATCH", &item, Some(json!({"name": "  CV.pdf  "})));
        assert_eq!(r.status, 200, "{}", r.text());
        let patched = r.json();
        assert_eq!(patched["name"], "CV.pdf");
        assert_eq!(patched["file"], file.as_str());
        assert_ne!(patched["uploaded"], a["uploaded"]);
        assert_eq!(patched["_history"][0]["action"], "update");
        assert_eq!(
            patched["_history"][0]["changes"]["name"],
            json!(["r\u{e9}sum\u{e9} final.pdf", "CV.pdf"])
        );
        let r = send_multipart(
            &w,
            "STAFF",
            "PUT",
            &item,
            &[("request", &ra.to_string())],
            Some(("filename=\"new.png\"", b"\x89PNG")),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let replaced = r.json();
        let new_file = replaced["file"].as_str().expect("file").to_string();
        assert_server_named(&new_file, "png");
        assert_eq!(replaced["name"], "CV.pdf", "an omitted name is kept");
        assert!(!media_dir(&w).join(&file).exists(), "replaced file removed");
        assert!(media_dir(&w).join(&new_file).exists());
        let dl = w.call("MB", "GET", &format!("{item}download/"), None);
        assert_eq!(dl.header("content-type"), Some("image/png"));
        // PUT without a file is refused (file and request are required).
        let r = w.call("STAFF", "PUT", &item, Some(json!({"request": ra})));
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"file": ["No file was submitted."]}))
        );

        // DELETE removes the row and its file.
        let r = w.call("STAFF", "DELETE", &item, None);
        assert_eq!(r.status, 204);
        assert!(
            !media_dir(&w).join(&new_file).exists(),
            "deleted file removed"
        );
        assert_eq!(
            w.call("MB", "GET", &format!("{item}download/"), None)
                .status,
            404
        );
        // Two updates and the delete carry the new name.
        let repr = format!("\"Attachment #{id} - 'CV.pdf' on request #{ra}\"");
        let logs = w.call(
            "STAFF",
            "GET",
            &format!("/logs/audit/?_search={}", urlencode(&repr)),
            None,
        );
        assert_eq!(logs.json()["count"], 3, "{}", logs.text());
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn attachments_upload_limits_types_and_accel_redirect() {
    for backend in backends() {
        let w = World::new(
            backend,
            &[
                ("KEYSTONE_UPLOAD__MAX_SIZE", "1048576"),
                ("KEYSTONE_UPLOAD__ACCEL_REDIRECT", "/protected-media/"),
            ],
        );
        let (ra, _) = add_requests(&w);
        upload_ok(&w, ra, "first.txt", b"make the directory");
        let before = tree(&media_dir(&w));
        let field_error = |r: Response, field: &str, msg: &str| {
            assert_eq!(r.status, 400, "{}", r.text());
            assert_eq!(r.json(), json!({field: [msg]}));
        };
        // Size: the limit is named; exactly the limit passes.
        let big = vec![b'x'; 1_048_577];
        field_error(
            upload(&w, "STAFF", ra, "big.txt", &big),
            "file",
            "File size should not exceed 1.00 MB.",
        );
        // Types come from the extension.
        for (name, msg) in [
            (
                "setup.exe",
                "File type 'application/x-msdownload' is not allowed.",
            ),
            ("page.html", "File type 'text/html' is not allowed."),
            ("data.json", "File type 'application/json' is not allowed."),
            ("archive.weird", "File type could not be resolved."),
            ("README", "File type could not be resolved."),
            ("report.pdf.gz", "File type could not be resolved."),
            (".txt", "File type could not be resolved."),
        ] {
            field_error(upload(&w, "STAFF", ra, name, b"data"), "file", msg);
        }
        field_error(
            upload(&w, "STAFF", ra, "empty.txt", b""),
            "file",
            "The submitted file is empty.",
        );
        let r = send_multipart(
            &w,
            "STAFF",
            "POST",
            "/allocations/attachments/",
            &[("request", &ra.to_string())],
            None,
        );
        field_error(r, "file", "No file was submitted.");
        let r = w.call(
            "STAFF",
            "POST",
            "/allocations/attachments/",
            Some(json!({"request": ra, "file": "allocations/x.txt"})),
        );
        field_error(
            r,
            "file",
            "The submitted data was not a file. Check the encoding type on the form.",
        );
        // Explicit names: non-blank, at most 250 characters.
        let long = "n".repeat(251);
        for (name, msg) in [
            ("   ", "This field may not be blank."),
            (
                long.as_str(),
                "Ensure this field has no more than 250 characters.",
            ),
        ] {
            let r = send_multipart(
                &w,
                "STAFF",
                "POST",
                "/allocations/attachments/",
                &[("request", &ra.to_string()), ("name", name)],
                Some(("filename=\"ok.txt\"", b"x")),
            );
            field_error(r, "name", msg);
        }
        // All errors together.
        let r = send_multipart(
            &w,
            "STAFF",
            "POST",
            "/allocations/attachments/",
            &[("request", "abc")],
            Some(("filename=\"bad.exe\"", b"x")),
        );
        assert_eq!(
            r.json(),
            json!({
                "file": ["File type 'application/x-msdownload' is not allowed."],
                "request": ["Incorrect type. Expected pk value, received str."],
            })
        );
        assert!(
            added(&before, &tree(&media_dir(&w))).is_empty(),
            "rejections stored nothing"
        );

        // Accepted: exactly the limit, Markdown (⚑ upstream could not resolve .md), upper-case
        // extensions, and more files than `upload.max_count` (not enforced).
        let exact = vec![b'y'; 1_048_576];
        let a = upload_ok(&w, ra, "exact.txt", &exact);
        let md = upload_ok(&w, ra, "notes.md", b"# Notes");
        assert_server_named(md["file"].as_str().expect("file"), "md");
        let up = upload_ok(&w, ra, "SCAN.JPG", b"\xff\xd8");
        assert_server_named(up["file"].as_str().expect("file"), "jpg");
        for i in 0..14 {
            upload_ok(&w, ra, &format!("many-{i}.csv"), b"a,b");
        }
        let page = w
            .call("MB", "GET", "/allocations/attachments/?_limit=1", None)
            .json();
        assert_eq!(page["count"], 18);

        // With `upload.accel_redirect` the body is left to nginx's internal location.
        let id = a["id"].as_i64().expect("id");
        let dl = w.call(
            "MB",
            "GET",
            &format!("/allocations/attachments/{id}/download/"),
            None,
        );
        assert_eq!(dl.status, 200);
        assert!(dl.body.is_empty());
        assert_eq!(
            dl.header("x-accel-redirect"),
            Some(format!("/protected-media/{}", a["file"].as_str().expect("file")).as_str())
        );
        assert_eq!(dl.header("content-type"), Some("text/plain"));
        assert_eq!(
            dl.header("content-disposition"),
            Some("attachment; filename=\"exact.txt\"; filename*=UTF-8''exact.txt")
        );
        // Still only for those who may read the record.
        let r = w.call(
            "AUTH",
            "GET",
            &format!("/allocations/attachments/{id}/download/"),
            None,
        );
        assert_eq!(r.status, 403);
        assert!(r.header("x-accel-redirect").is_none());
    }
}

#[test]
fn attachments_hostile_names_and_paths() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let (ra, _) = add_requests(&w);
        upload_ok(&w, ra, "first.txt", b"make the directory");
        let long = format!("{}.txt", "a".repeat(4996));
        // (Content-Disposition parameters, stored display name)
        let accepted: Vec<(String, String)> = vec![
            ("filename=\"../x.txt\"".into(), "x.txt".into()),
            (
                "filename=\"../../../../../tmp/evil.txt\"".into(),
                "evil.txt".into(),
            ),
            ("filename=\"/etc/passwd.txt\"".into(), "passwd.txt".into()),
            (
                "filename=\"..\\..\\windows\\win.ini.txt\"".into(),
                "win.ini.txt".into(),
            ),
            (
                "filename=\"C:\\Users\\ann\\plan.pdf\"".into(),
                "plan.pdf".into(),
            ),
            ("filename=\"..%2F..%2Fpct.txt\"".into(), "pct.txt".into()),
            (
                "filename=\"x.txt\"; filename*=UTF-8''..%2F..%2Fnul%00byte.txt".into(),
                "nulbyte.txt".into(),
            ),
            (
                "filename=\"a\u{202e}txt.exe.txt\"".into(),
                "atxt.exe.txt".into(),
            ),
            (
                format!("filename=\"{long}\""),
                format!("{}.txt", "a".repeat(246)),
            ),
        ];
        for (disposition, name) in &accepted {
            let before = tree(&media_dir(&w));
            let r = send_multipart(
                &w,
                "STAFF",
                "POST",
                "/allocations/attachments/",
                &[("request", &ra.to_string())],
                Some((disposition, b"payload")),
            );
            assert_eq!(r.status, 201, "{disposition}: {}", r.text());
            let a = r.json();
            assert_eq!(a["name"].as_str(), Some(name.as_str()), "{disposition}");
            let file = a["file"].as_str().expect("file").to_string();
            assert_server_named(&file, file.rsplit('.').next().unwrap_or(""));
            let after = tree(&media_dir(&w));
            assert_eq!(added(&before, &after), vec![file.clone()], "{disposition}");
            assert_eq!(after[&file], ("file".to_string(), b"payload".to_vec()));
        }
        // Nothing landed next to the upload directory either.
        assert!(!w.site.path("state/x.txt").exists());
        assert!(!w.site.path("x.txt").exists());

        // Names that resolve to no usable file or type are refused and store nothing.
        let refused: Vec<(String, &str)> = vec![
            (
                "filename=\"/etc/passwd\"".into(),
                "File type could not be resolved.",
            ),
            ("filename=\"../../..\"".into(), "No file was submitted."),
            ("filename=\"..\"".into(), "No file was submitted."),
            ("filename=\"\"".into(), "No file was submitted."),
            ("filename=\"dir/\"".into(), "No file was submitted."),
            ("filename=\"evil.txt/..\"".into(), "No file was submitted."),
        ];
        for (disposition, msg) in &refused {
            let before = tree(&media_dir(&w));
            let r = send_multipart(
                &w,
                "STAFF",
                "POST",
                "/allocations/attachments/",
                &[("request", &ra.to_string())],
                Some((disposition, b"payload")),
            );
            assert_eq!(r.status, 400, "{disposition}: {}", r.text());
            assert_eq!(r.json(), json!({"file": [msg]}), "{disposition}");
            assert!(
                added(&before, &tree(&media_dir(&w))).is_empty(),
                "{disposition}"
            );
        }
        // A raw NUL byte in the part header is malformed multipart: 400, nothing stored.
        let before = tree(&media_dir(&w));
        let r = send_multipart(
            &w,
            "STAFF",
            "POST",
            "/allocations/attachments/",
            &[("request", &ra.to_string())],
            Some(("filename=\"nul\0.txt\"", b"payload")),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(added(&before, &tree(&media_dir(&w))).is_empty());

        // Rows whose `file` points outside the attachments directory are never served.
        let outside = w.site.path("secret.txt");
        std::fs::write(&outside, b"top secret").expect("write");
        let link = media_dir(&w).join("allocations/link.txt");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        std::fs::write(media_dir(&w).join("loose.txt"), b"in the root").expect("write");
        let mut id = 100;
        for file in [
            "allocations/link.txt",
            "allocations/../../secret.txt",
            "../secret.txt",
            "/etc/passwd",
            "allocations/",
            "loose.txt",
            "allocations/../loose.txt",
        ] {
            id += 1;
            w.site.sql(&format!(
                "INSERT INTO allocations_attachment (id, file, name, request_id) \
                 VALUES ({id}, '{file}', 'planted', {ra})"
            ));
            for path in [
                format!("/allocations/attachments/{id}/download/"),
                format!("/media/{file}/"),
            ] {
                let r = w.call("STAFF", "GET", &path, None);
                assert_eq!(r.status, 404, "{file} via {path}: {}", r.text());
                assert_ne!(r.body, b"top secret".to_vec());
            }
            // Deleting such a row leaves whatever it pointed at alone.
            let r = w.call(
                "STAFF",
                "DELETE",
                &format!("/allocations/attachments/{id}/"),
                None,
            );
            assert_eq!(r.status, 204);
        }
        assert_eq!(std::fs::read(&outside).expect("kept"), b"top secret");
        assert!(std::fs::symlink_metadata(&link).is_ok(), "symlink kept");
        assert!(media_dir(&w).join("loose.txt").exists());
        std::fs::remove_file(&link).expect("unlink");

        // A symlinked attachments directory is refused: 500, nothing written through it.
        let elsewhere = w.site.path("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        let dir = media_dir(&w).join("allocations");
        let kept = media_dir(&w).join("allocations.real");
        std::fs::rename(&dir, &kept).expect("move away");
        std::os::unix::fs::symlink(&elsewhere, &dir).expect("symlink dir");
        let r = upload(&w, "STAFF", ra, "through-link.txt", b"payload");
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(
            std::fs::read_dir(&elsewhere).expect("read").count(),
            0,
            "nothing written outside"
        );
        std::fs::remove_file(&dir).expect("unlink dir");
        std::fs::rename(&kept, &dir).expect("restore");
        upload_ok(&w, ra, "after.txt", b"fine again");
    }
}

#[test]
fn comments_permission_matrix() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let (ra, rb) = add_requests(&w);
        let comment = |role: &str, body: Value| -> i64 {
            let r = w.call(role, "POST", "/allocations/comments/", Some(body));
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_i64().expect("id")
        };
        let public = comment("MB", json!({"content": "Looks good", "request": ra}));
        let private = comment(
            "STAFF",
            json!({"content": "Staff only", "request": ra, "private": true}),
        );
        let foreign = comment("STAFF", json!({"content": "Other team", "request": rb}));

        let coll = "/allocations/comments/";
        for method in ["GET", "HEAD", "OPTIONS"] {
            expect_row(&w, method, coll, None, [401, 200, 200, 200, 200, 200]);
        }
        for method in ["PUT", "PATCH", "DELETE", "TRACE"] {
            expect_row(&w, method, coll, None, [401, 405, 405, 405, 405, 405]);
        }
        for (role, want) in ROLES.iter().zip([401, 403, 201, 201, 201, 201]) {
            let r = w.call(
                role,
                "POST",
                coll,
                Some(json!({"content": format!("from {role}"), "request": ra})),
            );
            assert_eq!(r.status, want, "POST comment as {role}: {}", r.text());
        }
        for body in [
            json!({"content": "x"}),
            json!({"content": "x", "request": "abc"}),
            json!({"content": "x", "request": 999}),
            json!({"content": "x", "request": rb}),
        ] {
            assert_eq!(
                w.call("MB", "POST", coll, Some(body.clone())).status,
                403,
                "{body}"
            );
        }
        let r = w.call(
            "STAFF",
            "POST",
            coll,
            Some(json!({"content": "x", "request": 999})),
        );
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"request": ["Invalid pk \"999\" - object does not exist."]})
            )
        );

        // Public comment of the caller's team: any member reads and writes it.
        let item = format!("/allocations/comments/{public}/");
        for method in ["GET", "HEAD"] {
            expect_row(&w, method, &item, None, [401, 403, 200, 200, 200, 200]);
        }
        expect_row(&w, "OPTIONS", &item, None, [401, 200, 200, 200, 200, 200]);
        for method in ["POST", "TRACE"] {
            expect_row(&w, method, &item, None, [401, 405, 405, 405, 405, 405]);
        }
        expect_row(
            &w,
            "PUT",
            &item,
            Some(json!({"content": "Edited", "request": ra})),
            [401, 403, 200, 200, 200, 200],
        );
        expect_row(
            &w,
            "PATCH",
            &item,
            Some(json!({"content": "Edited again"})),
            [401, 403, 200, 200, 200, 200],
        );
        for (role, want) in ROLES.iter().zip([401, 403, 204, 204, 204, 204]) {
            let id = comment("STAFF", json!({"content": "to delete", "request": ra}));
            let r = w.call(
                role,
                "DELETE",
                &format!("/allocations/comments/{id}/"),
                None,
            );
            assert_eq!(
                r.status,
                want,
                "DELETE public comment as {role}: {}",
                r.text()
            );
        }

        // Private comment: staff only, whatever the method.
        let item = format!("/allocations/comments/{private}/");
        for method in ["GET", "HEAD"] {
            expect_row(&w, method, &item, None, [401, 403, 403, 403, 403, 200]);
        }
        expect_row(&w, "OPTIONS", &item, None, [401, 200, 200, 200, 200, 200]);
        expect_row(
            &w,
            "PUT",
            &item,
            Some(json!({"content": "Still private", "request": ra, "private": true})),
            [401, 403, 403, 403, 403, 200],
        );
        expect_row(
            &w,
            "PATCH",
            &item,
            Some(json!({"content": "Private again"})),
            [401, 403, 403, 403, 403, 200],
        );
        expect_row(&w, "DELETE", &item, None, [401, 403, 403, 403, 403, 204]);

        // Another team's comment: found, refused.
        let item = format!("/allocations/comments/{foreign}/");
        for role in ["AUTH", "MB", "AD", "OW"] {
            for method in ["GET", "PATCH", "DELETE"] {
                let r = w.call(role, method, &item, Some(json!({"content": "x"})));
                assert_eq!(r.status, 403, "{method} foreign comment as {role}");
            }
        }
        let r = w.call("MB", "GET", "/allocations/comments/99999/", None);
        assert_eq!(
            (r.status, r.json()),
            (
                404,
                json!({"detail": "No Comment matches the given query."})
            )
        );
        assert_eq!(
            w.call("MB", "GET", "/allocations/comments/x/", None).status,
            404
        );
    }
}

#[test]
fn comments_visibility_validation_and_history() {
    for backend in backends() {
        let w = World::new(backend, &[]);
        let (ra, rb) = add_requests(&w);
        let post =
            |role: &str, body: Value| w.call(role, "POST", "/allocations/comments/", Some(body));
        let public = post("MB", json!({"content": "Public note", "request": ra})).json();
        let private = post(
            "STAFF",
            json!({"content": "Secret note", "request": ra, "private": true}),
        )
        .json();
        let foreign = post("STAFF", json!({"content": "Elsewhere", "request": rb})).json();
        let (pid, sid, fid) = (
            public["id"].as_i64().expect("id"),
            private["id"].as_i64().expect("id"),
            foreign["id"].as_i64().expect("id"),
        );
        // Representation.
        let keys: Vec<&str> = public
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "id", "user", "_user", "_request", "_history", "content", "created", "private",
                "request"
            ]
        );
        assert_eq!(
            public["user"],
            w.id("MB"),
            "the author defaults to the caller"
        );
        assert_eq!(public["_user"]["username"], "mb");
        assert_eq!(public["_user"]["display_name"], "MB");
        assert_eq!(public["_request"]["title"], "Request One");
        assert_eq!(public["private"], false);
        assert_eq!(public["_history"][0]["action"], "create");
        assert_eq!(
            public["_history"][0]["changes"]["content"],
            json!(["None", "Public note"])
        );
        let repr = format!("\"Comment #{pid} - by mb on request #{ra}\"");
        let logs = w.call(
            "STAFF",
            "GET",
            &format!("/logs/audit/?_search={}", urlencode(&repr)),
            None,
        );
        assert_eq!(logs.json()["count"], 1, "{}", logs.text());

        // Lists: members see their teams' public comments; staff see everything.
        for role in ["MB", "AD", "OW"] {
            let page = w.call(role, "GET", "/allocations/comments/", None).json();
            assert_eq!(ids(&page), vec![pid], "{role}");
            let page = w
                .call(role, "GET", "/allocations/comments/?private=true", None)
                .json();
            assert_eq!(page["count"], 0, "{role}");
        }
        assert_eq!(
            w.call("AUTH", "GET", "/allocations/comments/", None).json()["count"],
            0
        );
        let page = w
            .call("STAFF", "GET", "/allocations/comments/", None)
            .json();
        assert_eq!(ids(&page), vec![pid, sid, fid]);
        let page = w
            .call("STAFF", "GET", "/allocations/comments/?private=true", None)
            .json();
        assert_eq!(ids(&page), vec![sid]);
        let page = w
            .call(
                "STAFF",
                "GET",
                "/allocations/comments/?_search=note&_order=-id",
                None,
            )
            .json();
        assert_eq!(ids(&page), vec![sid, pid]);
        let page = w
            .call(
                "STAFF",
                "GET",
                &format!("/allocations/comments/?user={}", w.id("MB")),
                None,
            )
            .json();
        assert_eq!(ids(&page), vec![pid]);

        // Validation, field by field.
        let bad = |role: &str, body: Value, want: Value| {
            let r = post(role, body.clone());
            assert_eq!(r.status, 400, "{body}: {}", r.text());
            assert_eq!(r.json(), want, "{body}");
        };
        bad(
            "MB",
            json!({"request": ra}),
            json!({"content": ["This field is required."]}),
        );
        bad(
            "MB",
            json!({"request": ra, "content": "   "}),
            json!({"content": ["This field may not be blank."]}),
        );
        bad(
            "MB",
            json!({"request": ra, "content": "c".repeat(2001)}),
            json!({"content": ["Ensure this field has no more than 2000 characters."]}),
        );
        bad(
            "MB",
            json!({"request": ra, "content": "x", "private": "maybe"}),
            json!({"private": ["Must be a valid boolean."]}),
        );
        bad(
            "MB",
            json!({"request": ra, "content": "x", "private": true}),
            json!({"private": ["Only staff users can write comments marked as private."]}),
        );
        bad(
            "AD",
            json!({"request": ra, "content": "x", "user": w.id("MB")}),
            json!({"user": ["Comment author must be the requesting user."]}),
        );
        bad(
            "AD",
            json!({"request": ra, "content": "x", "user": 99999}),
            json!({"user": ["Invalid pk \"99999\" - object does not exist."]}),
        );
        let r = post("MB", json!({"request": ra, "content": "c".repeat(2000)}));
        assert_eq!(r.status, 201);
        let r = post(
            "AD",
            json!({"request": ra, "content": "mine", "user": w.id("AD")}),
        );
        assert_eq!(r.status, 201);
        // Staff may write for someone else.
        let r = post(
            "STAFF",
            json!({"request": ra, "content": "on behalf", "user": w.id("OW")}),
        );
        assert_eq!(
            (r.status, r.json()["user"].clone()),
            (201, json!(w.id("OW")))
        );
        // Form encodings work too.
        let r = w.web.request(
            "POST",
            "/allocations/comments/",
            &[
                ("Authorization", &format!("Token {}", w.tokens["MB"])),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("content=form+note&request={ra}&private=false").as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());

        // Updates: any member edits any public comment; PUT without `user` re-assigns the
        // author to the caller, PATCH keeps it; privacy stays staff-only.
        let item = format!("/allocations/comments/{pid}/");
        let r = w.call(
            "OW",
            "PATCH",
            &item,
            Some(json!({"content": "Patched by OW"})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["user"], w.id("MB"));
        assert_eq!(
            r.json()["_history"][0]["changes"]["content"],
            json!(["Public note", "Patched by OW"])
        );
        let r = w.call(
            "AD",
            "PUT",
            &item,
            Some(json!({"content": "Put by AD", "request": ra})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["user"], w.id("AD"));
        assert_eq!(
            r.json()["created"],
            public["created"],
            "created never changes"
        );
        let r = w.call("MB", "PATCH", &item, Some(json!({"private": true})));
        assert_eq!(
            (r.status, r.json()),
            (
                400,
                json!({"private": ["Only staff users can write comments marked as private."]})
            )
        );
        let r = w.call("MB", "PATCH", &item, Some(json!({"user": w.id("OW")})));
        assert_eq!(r.status, 400);
        // Moving a comment to another team's request needs membership there.
        let r = w.call("MB", "PATCH", &item, Some(json!({"request": rb})));
        assert_eq!(r.status, 403);
        let r = w.call("MB", "PATCH", &item, Some(json!({"request": 999})));
        assert_eq!(r.status, 400);
        let r = w.call("STAFF", "PATCH", &item, Some(json!({"private": true})));
        assert_eq!((r.status, r.json()["private"].clone()), (200, json!(true)));
        assert_eq!(w.call("MB", "GET", &item, None).status, 403, "now private");
        let r = w.call(
            "STAFF",
            "PATCH",
            &item,
            Some(json!({"request": rb, "private": false})),
        );
        assert_eq!(r.status, 200);
        assert_eq!(w.call("MB", "GET", &item, None).status, 403, "moved away");
        // Deleting records a delete entry; the author stays deletable-protected (409 on users).
        let r = w.call("STAFF", "DELETE", &item, None);
        assert_eq!(r.status, 204);
        let r = w.call(
            "STAFF",
            "DELETE",
            &format!("/users/users/{}/", w.id("MB")),
            None,
        );
        assert_eq!(r.status, 409, "MB still authors comments: {}", r.text());
    }
}
