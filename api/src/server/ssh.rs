//! The SSH agents a client lends a build (`--ssh`), reached through its session.

use std::sync::Arc;

use anyhow::{Result, bail};
use tokio::runtime::Handle;
use tokio_stream::StreamExt as _;

use super::sessions::Session;

const CHECK_AGENT: &str = "/moby.sshforward.v1.SSH/CheckAgent";

/// The SSH agents a client lends the build through its session: each connection a step
/// makes to its agent socket is one `ForwardAgent` stream.
pub struct SessionSshAgents {
    /// The runtime that serves the session.
    pub handle: Handle,
    /// The client.
    pub session: Arc<Session>,
}

impl kiln_engine::SshAgents for SessionSshAgents {
    fn check(&self, id: &str) -> Result<()> {
        let no_agent = || anyhow::anyhow!("no SSH key {id:?} forwarded from the client");
        if !self.session.serves(CHECK_AGENT) {
            return Err(no_agent());
        }
        let request = crate::sshforward::CheckAgentRequest { id: id.to_string() };
        let answer = self.handle.block_on(
            crate::sshforward::ssh_client::SshClient::new(self.session.channel.clone())
                .check_agent(request),
        );
        match answer {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::Unimplemented => Err(no_agent()),
            Err(status) => bail!("{}", status.message()),
        }
    }

    fn connect(&self, id: &str) -> Result<Box<dyn kiln_engine::AgentStream>> {
        let (to_client, outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let messages = tokio_stream::wrappers::ReceiverStream::new(outgoing)
            .map(|data| crate::sshforward::BytesMessage { data });
        let mut request = tonic::Request::new(messages);
        request.metadata_mut().insert(
            crate::SSH_ID_METADATA,
            id.parse()
                .map_err(|_| anyhow::anyhow!("invalid SSH agent id {id:?}"))?,
        );
        let answers = self
            .handle
            .block_on(
                crate::sshforward::ssh_client::SshClient::new(self.session.channel.clone())
                    .forward_agent(request),
            )
            .map_err(|status| anyhow::anyhow!("SSH agent {id}: {}", status.message()))?
            .into_inner()
            .map(|message| message.map(|m| m.data));
        Ok(Box::new(crate::pipe::BlockingPipe::new(
            &self.handle,
            answers,
            to_client,
        )))
    }
}
