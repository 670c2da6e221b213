//! gRPC-Web on a service's port: a call over HTTP/1.1 with the grpc-web
//! content type, as a browser's fetch would make it, answered with the
//! message and its status in a trailer frame.

use prost::Message;
use reservoir_proto::wallet as pb;
use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, TestDatabase};

use crate::process::{Environment, ServiceProcess};

/// A length-prefixed gRPC-Web frame holding `message`.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut framed = vec![0_u8];
    framed.extend(u32::try_from(body.len()).unwrap().to_be_bytes());
    framed.extend(body);
    framed
}

/// The data frames' bytes and the trailer frame's text of a gRPC-Web answer.
fn unframe(mut body: &[u8]) -> (Vec<u8>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let content = &body[5..5 + length];
        if flag & 0x80 == 0 {
            data.extend_from_slice(content);
        } else {
            trailers.push_str(&String::from_utf8_lossy(content));
        }
        body = &body[5 + length..];
    }
    (data, trailers)
}

async fn call(address: std::net::SocketAddr, method: &str, key: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let mut request = http
        .post(format!("http://{address}/reservoir.wallet.v1.WalletService/{method}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    answer
}

#[tokio::test]
async fn a_grpc_web_call_over_http1_gets_its_answer_and_status() {
    let Some(database) = TestDatabase::create(Backend::Sqlite).await else { return };
    let environment = Environment::new(&database, None);
    let api_key = environment.create_tenant().await;
    let mut wallet = ServiceProcess::wallet(&environment);
    wallet.start(&environment).await;
    let account = open_funded_account(&client(wallet.address(), &api_key).await, "12.5").await;

    let request = pb::GetBalanceRequest { account_id: account.id.clone() };
    let answer = call(wallet.address(), "GetBalance", Some(&api_key), frame(&request)).await;
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    let (data, trailers) = unframe(&answer.bytes().await.unwrap());
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let balance = pb::GetBalanceResponse::decode(data.as_slice()).unwrap().balance.unwrap();
    assert_eq!((balance.account_id.as_str(), d(&balance.available)), (account.id.as_str(), d("12.5")));

    // Without a key: refused as over gRPC, with the status where gRPC-Web puts it.
    let refused = call(wallet.address(), "GetBalance", None, frame(&request)).await;
    let in_headers = refused.headers().get("grpc-status").map(|value| value.to_str().unwrap().to_owned());
    let (_, trailers) = unframe(&refused.bytes().await.unwrap());
    assert!(
        in_headers.as_deref() == Some("16") || trailers.contains("grpc-status:16"),
        "UNAUTHENTICATED: {in_headers:?} {trailers:?}"
    );
}

/// With `limits.browser_origins` listing a page's origin, that page's
/// preflight is answered before any key is asked for and its calls' answers
/// may be read (the gRPC status included); a page from elsewhere gets
/// neither.
#[tokio::test]
async fn a_listed_origin_may_call_from_a_browser_and_no_other() {
    let Some(database) = TestDatabase::create(Backend::Sqlite).await else { return };
    let mut environment = Environment::new(&database, None);
    let config = std::env::temp_dir().join(format!("reservoir-cors-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&config, "[limits]\nbrowser_origins = [\"https://app.example.test\"]\n").unwrap();
    environment.set("RESERVOIR_CONFIG", config.to_str().unwrap());
    let api_key = environment.create_tenant().await;
    let mut wallet = ServiceProcess::wallet(&environment);
    wallet.start(&environment).await;
    let account = open_funded_account(&client(wallet.address(), &api_key).await, "3").await;
    let path = format!("http://{}/reservoir.wallet.v1.WalletService/GetBalance", wallet.address());
    let http = reqwest::Client::builder().http1_only().build().unwrap();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &path)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
            .send()
    };

    let allowed = preflight("https://app.example.test").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example.test");
    let headers = allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("x-grpc-web"), "{headers}");
    let elsewhere = preflight("https://evil.example.test").await.unwrap();
    assert!(elsewhere.headers().get("access-control-allow-origin").is_none());

    let request = pb::GetBalanceRequest { account_id: account.id.clone() };
    let answer = http
        .post(&path)
        .header("origin", "https://app.example.test")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {api_key}"))
        .body(frame(&request))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["access-control-allow-origin"], "https://app.example.test");
    let exposed = answer.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    let (data, trailers) = unframe(&answer.bytes().await.unwrap());
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let balance = pb::GetBalanceResponse::decode(data.as_slice()).unwrap().balance.unwrap();
    assert_eq!(d(&balance.available), d("3"));
    std::fs::remove_file(config).ok();
}
