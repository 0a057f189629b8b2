//! The harness's own broker: a test's broker stopped and started again comes
//! back on the same port with its topics and records.

use std::time::Duration;

use siklus_e2e::*;

#[test]
fn a_restarted_broker_keeps_its_port_and_its_data() {
    let broker = Broker::start();
    let topic = unique("kept");
    broker.create_topic(&topic, 2);
    broker.produce(
        &topic,
        (0..20).map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes())),
    );
    let addr = broker.addr.clone();

    broker.stop();
    // Down: nothing answers on its port.
    assert!(std::net::TcpStream::connect_timeout(
        &addr.parse().expect("addr"),
        Duration::from_secs(1)
    )
    .is_err());

    broker.restart();
    assert_eq!(broker.addr, addr);
    assert_eq!(broker.read_all(&topic).len(), 20);
    broker.produce(&topic, [(b"k".to_vec(), b"after".to_vec())]);
    assert_eq!(broker.read_all(&topic).len(), 21);
}
