//! Hot reload under load: the config file is rewritten in the three ways real tools save it,
//! while a client keeps sending requests; none may fail, and every change must take effect.
//! An invalid file keeps the running table.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;

use crate::support::*;

#[derive(Clone, Copy, Debug)]
enum SaveStyle {
    /// Truncate and write the same inode (`echo > file`, many editors).
    InPlace,
    /// Write a temporary file and rename it over the config (vim, atomic writers).
    RenameReplace,
    /// Kubernetes ConfigMap: `sluice.yaml -> ..data/sluice.yaml`, and `..data` is a symlink
    /// to a timestamped directory that is swapped by renaming a new symlink over it.
    ConfigMap,
}

fn save(dir: &Path, style: SaveStyle, generation: usize, text: &str) {
    let path = dir.join("sluice.yaml");
    match style {
        SaveStyle::InPlace => std::fs::write(&path, text).expect("write"),
        SaveStyle::RenameReplace => {
            let tmp = dir.join(".sluice.yaml.swp");
            std::fs::write(&tmp, text).expect("write tmp");
            std::fs::rename(&tmp, &path).expect("rename");
        }
        SaveStyle::ConfigMap => {
            let data = dir.join(format!("..gen_{generation}"));
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::write(data.join("sluice.yaml"), text).expect("write");
            let tmp = dir.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
            if !path.exists() {
                std::os::unix::fs::symlink("..data/sluice.yaml", &path).expect("config symlink");
            }
        }
    }
}

/// A steady request loop; counts requests and failures until `stop`.
fn request_loop(
    url: String,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, f) = (Arc::clone(&sent), Arc::clone(&failed));
    let task = tokio::spawn(async move {
        let client = http1_client();
        while !stop.load(Ordering::SeqCst) {
            let request = http::Request::get(&url).body(empty()).expect("request");
            match client.request(request).await {
                Ok(response) if response.status() == StatusCode::OK => {
                    use http_body_util::BodyExt;
                    if response.into_body().collect().await.is_err() {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            }
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    (sent, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_one_rewrites_in_three_save_styles_fail_no_request() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let mut changes = 0;
    for style in [SaveStyle::InPlace, SaveStyle::RenameReplace, SaveStyle::ConfigMap] {
        let dir = temp_dir(&format!("reload-{style:?}"));
        let config =
            |target: &str| blue_canary(blue.addr, canary.addr, &format!("      weights: {{ {target}: 1 }}"), "");
        save(&dir, style, 0, &config("blue"));
        let proxy = controlled(
            &dir.join("sluice.yaml"),
            Options {
                watch: true,
                ..Options::default()
            },
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        // Four clients at once, each on its own keep-alive connection.
        let loops: Vec<_> = (0..4)
            .map(|_| request_loop(proxy.url("/"), Arc::clone(&stop)))
            .collect();
        let client = http1_client();
        for generation in 1..=17 {
            let target = if generation % 2 == 1 { "canary" } else { "blue" };
            save(&dir, style, generation, &config(target));
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while proxy.version_for(&client, &[]).await != target {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{style:?} generation {generation} never applied"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            changes += 1;
        }
        stop.store(true, Ordering::SeqCst);
        for (sent, failed, task) in loops {
            within("request loop", task).await.expect("loop");
            assert_eq!(
                failed.load(Ordering::SeqCst),
                0,
                "{style:?}: requests failed during reloads"
            );
            assert!(
                sent.load(Ordering::SeqCst) >= 17,
                "{style:?}: each loop must have run throughout"
            );
        }
        proxy.shutdown().await;
    }
    assert_eq!(changes, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_keeps_the_running_table_and_says_why() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("reload-invalid");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 1 }", ""),
    );
    let proxy = controlled(
        &path,
        Options {
            watch: true,
            ..Options::default()
        },
    )
    .await;
    let (_, before) = proxy.api("GET", "/api/v1/services", None).await;

    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { canry: 1 }", ""),
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let report = loop {
        let (_, report) = proxy.api("GET", "/api/v1/config", None).await;
        if report["last_reload"]["result"] == "error" {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the invalid file was never read: {report}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let errors = report["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("services[0].routing.weights: unknown version \\\"canry\\\""),
        "{errors}"
    );
    assert_eq!(report["reloads"]["failed"], 1);
    let (_, after) = proxy.api("GET", "/api/v1/services", None).await;
    assert_eq!(before, after, "the running table must stay");
    let client = http1_client();
    for _ in 0..10 {
        assert_eq!(proxy.version_for(&client, &[]).await, "blue");
    }

    // The API reload says the same, with 422.
    let (status, body) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("unknown version \"canry\""),
        "{body}"
    );
    proxy.shutdown().await;
}
