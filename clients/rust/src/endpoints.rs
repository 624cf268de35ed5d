//! One address per service, for deployments whose roles run as separate
//! processes without forwarding (`conveyor serve ROLE --peer …` makes any
//! one process answer every service, so most need only one address).

/// Where each service's calls go. For each service: its field here, else
/// its `CONVEYOR_<SERVICE>_ADDR` environment variable, else the general
/// address given with it. Every address may be a comma-separated failover
/// list, like the general one.
///
/// ```no_run
/// # async fn example() -> conveyor_client::Result<()> {
/// use conveyor_client::{Client, Endpoints, Worker};
/// let endpoints = Endpoints::default()
///     .results("http://results:50051")
///     .dispatch("http://dispatch:50051");
/// let client = Client::connect_endpoints("http://submission:50051", &endpoints).await?;
/// let worker = Worker::builder_endpoints("http://submission:50051", &endpoints);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    submission: Option<String>,
    results: Option<String>,
    dispatch: Option<String>,
}

/// The services this SDK calls (it has no schedule calls), as named in
/// `CONVEYOR_<SERVICE>_ADDR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Submission,
    Results,
    Dispatch,
}

impl Service {
    fn env_var(self) -> &'static str {
        match self {
            Service::Submission => "CONVEYOR_SUBMISSION_ADDR",
            Service::Results => "CONVEYOR_RESULTS_ADDR",
            Service::Dispatch => "CONVEYOR_DISPATCH_ADDR",
        }
    }
}

impl Endpoints {
    /// Submission calls (submit, cancel, workflows) go to `address`.
    pub fn submission(mut self, address: impl Into<String>) -> Self {
        self.submission = Some(address.into());
        self
    }

    /// Results calls (get, wait, watch, dead letters) go to `address`.
    pub fn results(mut self, address: impl Into<String>) -> Self {
        self.results = Some(address.into());
        self
    }

    /// Workers' streams (and ListWorkers) go to `address`.
    pub fn dispatch(mut self, address: impl Into<String>) -> Self {
        self.dispatch = Some(address.into());
        self
    }

    /// The address of `service`'s calls.
    pub(crate) fn resolve(&self, service: Service, general: &str) -> String {
        let field = match service {
            Service::Submission => &self.submission,
            Service::Results => &self.results,
            Service::Dispatch => &self.dispatch,
        };
        field
            .clone()
            .filter(|address| !address.trim().is_empty())
            .or_else(|| {
                std::env::var(service.env_var())
                    .ok()
                    .filter(|address| !address.trim().is_empty())
            })
            .unwrap_or_else(|| general.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_wins_then_the_general_address() {
        let endpoints = Endpoints::default().results("http://results:1");
        assert_eq!(
            endpoints.resolve(Service::Results, "http://front:1"),
            "http://results:1"
        );
        // No field and (in this test) no CONVEYOR_DISPATCH_ADDR.
        if std::env::var("CONVEYOR_DISPATCH_ADDR").is_err() {
            assert_eq!(
                endpoints.resolve(Service::Dispatch, "http://front:1"),
                "http://front:1"
            );
        }
    }
}
