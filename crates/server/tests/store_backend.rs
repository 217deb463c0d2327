//! The configuration chooses the store (`store`): the embedded file by
//! default, or memory, which serves the same protocol and keeps nothing.

mod common;

use common::{start, start_with};
use keycard_proto::{Path, Value};
use keycard_server::{Config, Server, STORE_FILE};
use keycard_store::Backend;

#[tokio::test]
async fn the_default_store_is_the_file_in_the_data_directory() {
    let s = start().await;
    assert!(s.dir.path().join(STORE_FILE).is_file());
}

#[tokio::test]
async fn a_memory_store_serves_and_keeps_nothing() {
    let s = start_with(|c| c.store = Backend::Memory).await;
    let c = keycard_client::Client::connect(s.addr())
        .await
        .expect("connect");
    // The same first writes as on the file: the server secret and the
    // OPAQUE setup.
    assert_eq!(c.greeting().tock, 2);
    let p = Path::parse("app.greeting").expect("path");
    c.set(&p, "hello".into()).await.expect("set");
    let got = c.get(&p).await.expect("get").expect("there");
    assert_eq!((got.value, got.tock), (Value::from("hello"), 3));
    assert!(
        !s.dir.path().join(STORE_FILE).exists(),
        "a memory store writes no store file"
    );

    // Another server on the same directory starts from nothing.
    let again = Server::open(Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: s.dir.path().to_path_buf(),
        store: Backend::Memory,
        ..Config::default()
    })
    .await
    .expect("starts")
    .spawn()
    .expect("spawn");
    let c = keycard_client::Client::connect(again.addr)
        .await
        .expect("connect");
    assert_eq!(c.greeting().tock, 2);
    assert_eq!(c.get(&p).await.expect("get"), None);
}
