//! go-micro's plugin story with real processes and real libraries: an
//! unrebuilt service or client binary switches to a plugin component with
//! `MICRO_PLUGIN` and a flag; and every bad plugin stops start-up with an
//! exact error and a non-zero exit.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn registry_env(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("MICRO_REGISTRY", "local".into()),
        ("MICRO_REGISTRY_ADDRESS", dir.display().to_string()),
        ("MICRO_LOG_LEVEL", "info".into()),
    ]
}

fn cmd(bin_name: &str, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(bin(bin_name));
    without_micro_env(&mut c);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn service(env: &[(&str, String)], extra_env: &[(&str, String)], args: &[&str]) -> std::io::Result<Proc> {
    let mut c = cmd("greeter-service", env);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    Ok(Proc(c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?))
}

#[test]
fn client_plugin_switches_the_unrebuilt_client_binary() -> TestResult {
    let plugin = example_plugin("brpc", "client", "new_client");
    let dir = tempfile::tempdir()?;
    let env = registry_env(dir.path());
    let svc = service(&env, &[], &[])?;
    wait_registered(&env, "greeter", Duration::from_secs(20))?;

    // Built in: mucp.
    let o = cmd("greeter-client", &env).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello John\n");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("brpc call"));

    // The same binary with the plugin: MICRO_PLUGIN and --client brpc.
    let o =
        cmd("greeter-client", &env).env("MICRO_PLUGIN", &plugin).args(["--client", "brpc", "--count", "3"]).output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello John\nHello John\nHello John\n");
    assert_eq!(err.matches("brpc call").count(), 3, "each call went through the plugin:\n{err}");
    assert!(err.contains("call=3"), "{err}");

    // And with the --plugin flag and MICRO_CLIENT.
    let o = cmd("greeter-client", &env).env("MICRO_CLIENT", "brpc").arg("--plugin").arg(&plugin).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("brpc call"));
    drop(svc);
    Ok(())
}

#[test]
fn streams_of_every_kind_go_through_a_client_plugin_library() -> TestResult {
    let plugin = example_plugin("brpc", "client", "new_client");
    let dir = tempfile::tempdir()?;
    let env = registry_env(dir.path());
    let svc = service(&env, &[], &[])?;
    wait_registered(&env, "greeter", Duration::from_secs(20))?;
    let with_plugin = [env.clone(), vec![("MICRO_PLUGIN", plugin.display().to_string())]].concat();
    let logs = calls_and_streams_of_every_kind(&with_plugin, &["--client", "brpc"], "mucp")?;
    assert_eq!(logs.matches("brpc stream").count(), 4, "each stream went through the plugin:\n{logs}");
    drop(svc);
    Ok(())
}

/// Runs `micro` with `env` and `args`, `stdin` on its standard input.
fn run_micro(
    env: &[(&str, String)],
    args: &[&str],
    stdin: &[u8],
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    let mut c = cmd("micro", env);
    let mut child = c.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    {
        use std::io::Write;
        let mut i = child.stdin.take().ok_or("no stdin")?;
        i.write_all(stdin)?;
    }
    Ok(child.wait_with_output()?)
}

/// A call, and streams of every kind, to the greeter through `micro` with
/// `env` and `client` (extra arguments), answered as built in by a node
/// whose metadata names `server`; returns micro's logs.
fn calls_and_streams_of_every_kind(
    env: &[(&str, String)],
    client: &[&str],
    server: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut logs = String::new();
    let mut run = |args: &[&str], stdin: &[u8]| -> Result<std::process::Output, Box<dyn std::error::Error>> {
        let o = run_micro(env, &[args, client].concat(), stdin)?;
        logs.push_str(&String::from_utf8_lossy(&o.stderr));
        Ok(o)
    };
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let o = run(&["call", "greeter", "Greeter.Hello", r#"{"name": "John"}"#, "--output", "json"], b"")?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&o), "{\"greeting\":\"Hello John\"}\n");
    // Server-streaming: one request, three answers.
    let o = run(&["call", "greeter", "Greeter.Count", r#"{"n": 3}"#, "--stream", "--output", "json"], b"")?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&o), "{\"i\":1}\n{\"i\":2}\n{\"i\":3}\n");
    // Bidirectional: names in from stdin, greetings out as they come.
    let names = b"{\"name\": \"a\"}\n{\"name\": \"b\"}\n";
    let o = run(&["call", "greeter", "Greeter.Chat", "-", "--stream", "--output", "json"], names)?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&o), "{\"greeting\":\"Hello a\"}\n{\"greeting\":\"Hello b\"}\n");
    // Client-streaming: names in until stdin ends (the caller's side closes),
    // one greeting out, after the last name.
    let names = b"{\"name\": \"a\"}\n{\"name\": \"b\"}\n{\"name\": \"c\"}\n";
    let o = run(&["call", "greeter", "Greeter.Join", "-", "--stream", "--output", "json"], names)?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&o), "{\"greeting\":\"Hello a and b and c\"}\n");
    // A handler's error ends the stream with that error.
    let o = run(&["call", "greeter", "Greeter.Count", r#"{"n": 100000}"#, "--stream"], b"")?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("n must be at most 10000"));
    // The server it was: the node's metadata names it.
    let o = run(&["describe", "greeter", "--output", "json"], b"")?;
    let named = format!("\"server\": \"{server}\"");
    assert!(out(&o).contains(&named), "the node's metadata names the server ({named}):\n{}", out(&o));
    Ok(logs)
}

/// The service's logs so far, once it is stopped.
fn stopped_logs(mut svc: Proc) -> std::io::Result<String> {
    svc.0.kill()?;
    let mut err = String::new();
    if let Some(mut e) = svc.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err)?;
    }
    Ok(err)
}

#[test]
fn an_unrebuilt_service_serves_calls_and_streams_of_every_kind_through_a_server_plugin_library() -> TestResult {
    // Two copies of micro and tokio: the service binary's, and the plugin's,
    // whose mucp server serves the binary's handlers across the boundary.
    let plugin = example_plugin("srvx", "server", "new_server");
    let dir = tempfile::tempdir()?;
    let env = registry_env(dir.path());
    let svc = service(&env, &[("MICRO_PLUGIN", plugin.display().to_string())], &["--server", "srvx"])?;
    wait_registered(&env, "greeter", Duration::from_secs(20))?;
    calls_and_streams_of_every_kind(&env, &[], "srvx")?;
    let err = stopped_logs(svc)?;
    assert!(
        err.contains("srvx server created") && err.contains("protocol=\"mucp\"") && err.contains("srvx serving"),
        "{err}"
    );
    Ok(())
}

#[test]
fn grpc_calls_and_streams_of_every_kind_go_from_a_client_plugin_to_a_server_plugin() -> TestResult {
    // gRPC on both sides of the wire, each from a plugin library with its
    // own copy of micro, tokio and tonic: the service's server and micro's client.
    let (server, client) =
        (example_plugin("srvx", "server", "new_server"), example_plugin("grpcx", "client", "new_client"));
    let dir = tempfile::tempdir()?;
    let env = registry_env(dir.path());
    let server_env = [("MICRO_PLUGIN", server.display().to_string()), ("SRVX_PROTOCOL", "grpc".into())];
    let svc = service(&env, &server_env, &["--server", "srvx"])?;
    wait_registered(&env, "greeter", Duration::from_secs(20))?;
    let client_env = [env.clone(), vec![("MICRO_PLUGIN", client.display().to_string())]].concat();
    let logs = calls_and_streams_of_every_kind(&client_env, &["--client", "grpcx"], "srvx")?;
    assert_eq!(logs.matches("grpcx stream").count(), 4, "each stream went through the client plugin:\n{logs}");
    let err = stopped_logs(svc)?;
    assert!(err.contains("srvx server created") && err.contains("protocol=\"grpc\""), "{err}");
    Ok(())
}

#[test]
fn transport_plugin_carries_the_calls_of_service_and_client() -> TestResult {
    let plugin = example_plugin("tcpx", "transport", "new_transport");
    let dir = tempfile::tempdir()?;
    let env = registry_env(dir.path());
    let with = [("MICRO_PLUGIN", plugin.display().to_string()), ("MICRO_TRANSPORT", "tcpx".to_string())];
    let svc = service(&env, &with, &[])?;
    let listing = wait_registered(&env, "greeter", Duration::from_secs(20))?;
    let desc = Command::new(MICRO)
        .args(["describe", "greeter", "--output", "json"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()?;
    let desc: serde_json::Value = serde_json::from_slice(&desc.stdout)?;
    assert_eq!(desc[0]["nodes"][0]["metadata"]["transport"], "tcpx", "{listing}");

    let o = cmd("greeter-client", &env).envs(with.iter().map(|(k, v)| (k, v))).args(["--name", "Plugin"]).output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello Plugin\n");
    assert!(err.contains("host_sockets=true"), "tcpx uses the host's sockets by default: {err}");
    // The same plugin on its own runtime's sockets.
    let o = cmd("greeter-client", &env)
        .envs(with.iter().map(|(k, v)| (k, v)))
        .env("TCPX_OWN_RUNTIME", "1")
        .args(["--name", "Own"])
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello Own\n");
    assert!(err.contains("host_sockets=false"), "{err}");

    let out = svc.terminate(Duration::from_secs(15))?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcpx listening"));
    Ok(())
}

#[test]
fn registry_plugin_holds_the_services_of_both_processes() -> TestResult {
    let plugin = example_plugin("logreg", "registry", "new_registry");
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("registry.log");
    let env = vec![
        ("MICRO_PLUGIN", plugin.display().to_string()),
        ("MICRO_REGISTRY", "logreg".to_string()),
        ("MICRO_REGISTRY_ADDRESS", log.display().to_string()),
        ("MICRO_LOG_LEVEL", "info".to_string()),
    ];
    let svc = service(&env, &[], &[])?;
    wait_registered(&env, "greeter", Duration::from_secs(20))?;
    let o = cmd("greeter-client", &env).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello John\n");
    // The records are go-micro JSON lines in the plugin's file.
    let text = std::fs::read_to_string(&log)?;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().ok_or("empty log")?)?;
    assert_eq!(first["op"], "put");
    assert_eq!(first["service"]["name"], "greeter");
    assert!(first["service"]["nodes"][0]["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")));
    svc.terminate(Duration::from_secs(15))?;
    assert!(
        std::fs::read_to_string(&log)?.lines().any(|l| l.contains("\"op\":\"del\"")),
        "deregistered through the plugin"
    );
    Ok(())
}

/// A registry from a plugin meets the same contract as the built-in ones
/// (`micro_testkit::contract::registry`), through the ABI: listing, watch
/// events crossing the boundary, expiry after a 1 s TTL, deregistration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_plugin_meets_the_registry_contract() -> TestResult {
    let plugin = tokio::task::spawn_blocking(|| example_plugin("logreg", "registry", "new_registry")).await?;
    let dir = tempfile::tempdir()?;
    let flags = micro::Flags {
        plugin: vec![plugin.display().to_string()],
        registry: Some("logreg".into()),
        registry_address: Some(dir.path().join("registry.log").display().to_string()),
        ..Default::default()
    };
    let svc = micro::Service::builder("contract").flags(flags).build()?;
    micro_testkit::contract::registry(&**svc.registry(), "contract", Duration::from_secs(1), Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Starts greeter-service with `plugin_env` and expects start-up to fail with `want` in stderr.
fn refused(plugin_env: &str, extra: &[&str], want: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut c = cmd("greeter-service", &registry_env(dir.path()));
    let o = c.env("MICRO_PLUGIN", plugin_env).args(extra).output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{plugin_env}: a clean failure, not a crash:\n{err}");
    assert!(err.contains(want), "{plugin_env}: want {want:?} in:\n{err}");
    assert!(!err.contains("panicked at"), "the host must not crash:\n{err}");
    Ok(())
}

// Each way a plugin can be bad stops start-up with its own exact error (one test each).

#[test]
fn a_missing_file_stops_start_up() -> TestResult {
    refused("/nonexistent/brpc.so", &[], "error: plugin /nonexistent/brpc.so: no such file")
}

#[test]
fn a_text_file_is_not_an_elf_library() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = dir.path().join("notes.so");
    std::fs::write(&text, "not a library")?;
    let want =
        format!("error: plugin {}: not an ELF shared library (no ELF magic number)", text.canonicalize()?.display());
    refused(&text.display().to_string(), &[], &want)
}

#[test]
fn a_c_library_without_the_descriptor_is_not_a_plugin() -> TestResult {
    // A C shared library without the symbol, built here with cc.
    let dir = tempfile::tempdir()?;
    let c_src = dir.path().join("lib.c");
    std::fs::write(&c_src, "int answer(void) { return 42; }\n")?;
    let c_lib = dir.path().join("libanswer.so");
    let st = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&c_lib).arg(&c_src).status()?;
    assert!(st.success(), "cc failed");
    refused(&c_lib.display().to_string(), &[], "not a micro plugin: no `MICRO_PLUGIN` symbol")
}

#[test]
fn a_wrong_magic_number_is_refused() -> TestResult {
    refused(
        &probe(Some("bad-magic")).display().to_string(),
        &[],
        "magic number mismatch: plugin has 0x4f5243494d544f4e, host has 0x474c504f5243494d",
    )
}

#[test]
fn another_plugin_abi_version_is_refused() -> TestResult {
    refused(
        &probe(Some("bad-abi")).display().to_string(),
        &[],
        &format!(
            "plugin ABI version mismatch: plugin has {}, host has {}: rebuild the plugin against micro-plugin",
            micro_plugin::abi::ABI_VERSION + 998,
            micro_plugin::abi::ABI_VERSION
        ),
    )
}

#[test]
fn an_unknown_type_is_refused_as_go_micro_words_it() -> TestResult {
    refused(&probe(Some("unknown-type")).display().to_string(), &[], "unknown plugin type: database for probe")
}

#[test]
fn a_new_func_that_does_not_fit_its_type_is_an_invalid_plugin() -> TestResult {
    refused(
        &probe(Some("wrong-kind")).display().to_string(),
        &[],
        "invalid plugin probe: its NewFunc new_client makes a client, but its Type is transport",
    )
}

#[test]
fn a_panic_in_init_stops_start_up_with_its_message() -> TestResult {
    let panics = probe(Some("panic-init")).display().to_string();
    refused(&panics, &[], "init of probe failed: panic in init: probe panics in init")?;
    refused(&panics, &[], "plugin code panicked: probe panics in init")
}

#[test]
fn a_file_writable_by_others_is_refused() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let ww = dir.path().join("ww.so");
    std::fs::copy(probe(None), &ww)?;
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o666))?;
    refused(&ww.display().to_string(), &[], "refusing to load: the file is writable by group or others (mode 666)")
}

#[test]
fn a_file_in_a_directory_writable_by_others_is_refused() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir)?;
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777))?;
    let in_open = open_dir.join("p.so");
    std::fs::copy(probe(None), &in_open)?;
    std::fs::set_permissions(&in_open, std::fs::Permissions::from_mode(0o644))?;
    refused(&in_open.display().to_string(), &[], "is writable by group or others (mode 777)")
}

#[test]
fn a_wrong_sha256_pin_is_refused() -> TestResult {
    let pin = format!("{}#sha256={}", probe(None).display(), "0".repeat(64));
    refused(&pin, &[], "sha256 mismatch: pinned 0000")
}

/// Runs `micro services` with plugins and returns (success, stderr).
fn micro_with(plugins: &str, args: &[&str]) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let o = Command::new(MICRO)
        .envs(registry_env(dir.path()))
        .env("MICRO_PLUGIN", plugins)
        .args(args)
        .arg("services")
        .output()?;
    Ok((o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned()))
}

#[test]
fn plugin_lists_skip_empty_entries_load_a_file_once_and_honour_overrides() -> TestResult {
    let good = probe(None);
    let g = good.display().to_string();
    let (ok, err) = micro_with(&format!(",,{g},,"), &[])?;
    assert!(ok, "{err}");
    assert_eq!(err.matches("plugin loaded").count(), 1, "{err}");

    // The same file under two spellings is loaded once.
    let other_spelling = format!(
        "{}/../out/{}",
        good.parent().ok_or("no parent")?.display(),
        good.file_name().ok_or("no name")?.to_string_lossy()
    );
    let (ok, err) = micro_with(&format!("{g},{other_spelling}"), &[])?;
    assert!(ok, "{err}");
    assert_eq!(err.matches("plugin loaded").count(), 1, "{err}");

    // A correct pin loads; an insecure file loads with the override.
    let digest = Command::new("sha256sum").arg(&good).output()?;
    let hex = String::from_utf8_lossy(&digest.stdout).split_whitespace().next().unwrap_or("").to_string();
    let (ok, err) = micro_with(&format!("{g}#sha256={hex}"), &[])?;
    assert!(ok, "{err}");
    let dir = tempfile::tempdir()?;
    let ww = dir.path().join("ww.so");
    std::fs::copy(&good, &ww)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o666))?;
    let (ok, err) = micro_with(&ww.display().to_string(), &["--plugin-allow-insecure"])?;
    assert!(ok, "{err}");

    // Another file with a component of the same name replaces it, and says so.
    let again = dir.path().join("probe-again.so");
    std::fs::copy(&good, &again)?;
    let (ok, err) = micro_with(&format!("{g},{}", again.display()), &[])?;
    assert!(ok, "{err}");
    assert_eq!(err.matches("plugin loaded").count(), 2, "{err}");
    assert!(err.contains("plugin probe replaces the client named \"probe\" that was already registered"), "{err}");
    Ok(())
}

#[test]
fn inspect_shows_the_config_and_whether_it_loads() -> TestResult {
    let good = probe(None);
    let o = Command::new(MICRO).args(["plugin", "inspect"]).arg(&good).output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    for want in [
        "Name:         probe",
        "Type:         client",
        "NewFunc:      new_client",
        &format!("ABI version:  {v} (host {v})", v = micro_plugin::abi::ABI_VERSION),
        "Loadable:     yes",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    let o = Command::new(MICRO).args(["plugin", "inspect", "--output", "json"]).arg(&good).output()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["name"], "probe");
    assert_eq!(v["build"]["abi_version"], micro_plugin::abi::ABI_VERSION);
    assert_eq!(v["loadable"], true);

    let bad = probe(Some("bad-abi"));
    let o = Command::new(MICRO).args(["plugin", "inspect"]).arg(&bad).output()?;
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Loadable:     no: plugin"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let wrong = probe(Some("wrong-kind"));
    let o = Command::new(MICRO).args(["plugin", "inspect"]).arg(&wrong).output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(out.contains("Type:         transport") && out.contains("invalid plugin probe"), "{out}");
    Ok(())
}

#[test]
fn generate_writes_a_crate_that_build_would_compile() -> TestResult {
    let dir = tempfile::tempdir()?;
    let o = Command::new(MICRO)
        .args(["plugin", "generate", "--name", "brpc", "--type", "client", "--new-func", "new_client", "--path"])
        .arg(root().join("examples/plugins/brpc"))
        .arg("-o")
        .arg(dir.path().join("gen"))
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lib = std::fs::read_to_string(dir.path().join("gen/src/lib.rs"))?;
    assert!(lib.contains("micro_plugin::export_plugin!(") && lib.contains("new: brpc::new_client"), "{lib}");
    assert!(dir.path().join("gen/Cargo.lock").is_file(), "pinned to the host's dependency versions");
    // A failing build shows cargo's own error.
    let bad = Command::new(MICRO)
        .args([
            "plugin",
            "build",
            "--name",
            "brpc",
            "--type",
            "client",
            "--new-func",
            "no_such_fn",
            "--debug",
            "--path",
        ])
        .arg(root().join("examples/plugins/brpc"))
        .arg("-o")
        .arg(dir.path().join("x/brpc.so"))
        .arg("--target-dir")
        .arg(plugin_target())
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(err.contains("cargo build of plugin brpc failed") && err.contains("no_such_fn"), "{err}");
    Ok(())
}
