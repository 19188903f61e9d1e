//! Mutual TLS: clients and agents without a certificate, or with one from another CA, are
//! refused; nothing listens in plaintext.

use std::time::Duration;

use cd_common::certs::Role;
use cd_proto::v1 as pb;
use cd_proto::v1::control_service_client::ControlServiceClient;
use cd_tests::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_agents_without_a_valid_certificate_are_refused() -> anyhow::Result<()> {
    let s = Single::start(&[], &[], &[]).await?;

    // A client that trusts the CA but presents no certificate: TLS 1.3 lets it connect, the
    // first RPC fails.
    let ca = Certificate::from_pem(std::fs::read(&s.op.ca)?);
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let refused = async {
        let ch = Endpoint::from_shared(s.coord.endpoint.clone())?
            .tls_config(no_cert)?
            .connect()
            .await?;
        ControlServiceClient::new(ch)
            .list_pipelines(pb::ListPipelinesRequest {})
            .await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );

    // A certificate from another CA.
    let other = Certs::new(&s.path("other-ca"))?;
    let foreign = other.tls(Role::Operator, "mallory");
    let refused = async {
        let mut c = client(&s.coord.endpoint, &foreign).await?;
        c.list_pipelines(pb::ListPipelinesRequest {}).await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );

    // Plaintext HTTP/2 is not served at all.
    let plain = async {
        let ch = Endpoint::from_shared(s.coord.endpoint.replace("https://", "http://"))?
            .connect()
            .await?;
        ControlServiceClient::new(ch)
            .list_pipelines(pb::ListPipelinesRequest {})
            .await?;
        anyhow::Ok(())
    }
    .await;
    assert!(plain.is_err(), "plaintext was served");

    // An agent with a foreign certificate never registers; it says why in its log.
    let agent_tls = other.tls(Role::Agent, "rogue");
    let agent = Agent::start(
        "rogue",
        &s.coord.endpoint,
        &agent_tls,
        &s.path("rogue"),
        &[],
    )?;
    eventually(
        "the rogue agent to log its connection failure",
        Duration::from_secs(20),
        || async {
            let log = agent.proc.log_text().to_lowercase();
            (log.contains("certificate") || log.contains("tls") || log.contains("handshake"))
                .then_some(())
        },
    )
    .await?;
    let mut c = s.client().await?;
    let agents = c
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert!(agents.is_empty(), "rogue agent registered: {agents:?}");

    // The operator's own certificate works on the same server.
    assert!(c.list_pipelines(pb::ListPipelinesRequest {}).await.is_ok());
    Ok(())
}
