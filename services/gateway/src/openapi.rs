//! The document of the public API, served at the gateway's `/openapi.json`.
//!
//! It is assembled from the routes the gateway serves, as they are registered
//! ([`crate::routes`]): a route passed on to a service takes that service's own description of
//! it (its parameters, body and answers, from the service's handlers), and adds what the
//! gateway itself may answer (the edge's problems: a body too large, a rate limit, the service
//! down). So a route cannot be served without being described, nor described without being
//! served, and a service's change of its API changes the public document with it.

use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::MethodFilter;
use dozen_kit::Problem;
use dozen_kit::problem::CONTENT_TYPE as PROBLEM;
use utoipa::PartialSchema as _;
use utoipa::openapi::path::{Operation, Paths};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Components, Content, HttpMethod, OpenApi, Ref, RefOr, Response, Schema};
use utoipa_axum::router::UtoipaMethodRouter;

use crate::limits::RouteLimit;

/// The name of the access-token security scheme, as every service's handlers name it.
const BEARER: &str = "bearer";

/// Each service's own document, which the routes passed on to it are described from.
#[derive(Debug)]
pub struct Documents {
    /// Signup's.
    pub signup: Service,
    /// Users'.
    pub users: Service,
    /// Passwords'.
    pub passwords: Service,
    /// Verification's.
    pub verification: Service,
    /// Friends'.
    pub friends: Service,
}

impl Documents {
    /// The documents the services' handlers describe.
    pub fn of_services() -> Self {
        Self {
            signup: Service::new("signup", dozen_signup::routes::openapi()),
            users: Service::new("users", dozen_users::routes::openapi()),
            passwords: Service::new("passwords", dozen_passwords::routes::openapi()),
            verification: Service::new("verification", dozen_verification::routes::openapi()),
            friends: Service::new("friends", dozen_friends::routes::openapi()),
        }
    }
}

/// One service's document.
pub struct Service {
    name: &'static str,
    document: OpenApi,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Service")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Service {
    fn new(name: &'static str, document: OpenApi) -> Self {
        Self { name, document }
    }

    /// The schemas the service's routes refer to.
    fn schemas(&self) -> Vec<(String, RefOr<Schema>)> {
        self.document
            .components
            .as_ref()
            .map(|components| components.schemas.clone().into_iter().collect())
            .unwrap_or_default()
    }
}

/// A public route passed on to `method path` of a service, described as the service describes
/// it.
#[allow(missing_debug_implementations, reason = "utoipa's documents have no Debug")]
pub struct Forwarded {
    method: HttpMethod,
    operation: Operation,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl Forwarded {
    /// The route `method path` of `service`.
    ///
    /// # Panics
    /// When the service has no such route: the gateway would pass requests on to nothing.
    pub fn to(service: &Service, method: HttpMethod, path: &str) -> Self {
        let mut operation = service
            .document
            .paths
            .get_path_operation(path, method.clone())
            .unwrap_or_else(|| {
                panic!(
                    "{} has no route {:?} {path} to pass requests on to",
                    service.name,
                    method_filter(&method)
                )
            })
            .clone();
        operation.tags = Some(vec![service.name.to_owned()]);
        // Whatever the service answers, the gateway may answer for it when it is out of reach.
        add_problem(
            &mut operation,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} is down or its circuit breaker is open (then with Retry-After)",
                service.name
            ),
        );
        Self {
            method,
            operation,
            schemas: service.schemas(),
        }
    }

    /// Serve the route at the gateway's `path` with `handler`, within `limit` if any.
    pub fn at<H, T, S>(self, path: &str, handler: H, limit: Option<&RouteLimit>) -> UtoipaMethodRouter<S>
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        let route = axum::routing::on(method_filter(&self.method), handler);
        let mut paths = Paths::new();
        paths.add_path_operation(path, vec![self.method], self.operation);
        edge((self.schemas, paths, route), limit)
    }
}

/// A route the gateway answers itself, described by its handler (`routes!`), within `limit` if
/// any.
pub fn own<S>(route: UtoipaMethodRouter<S>, limit: Option<&RouteLimit>) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    edge(route, limit)
}

/// Add what the edge may answer to every operation of `route`, and put it within `limit`.
fn edge<S>(
    (schemas, mut paths, route): UtoipaMethodRouter<S>,
    limit: Option<&RouteLimit>,
) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    for item in paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            if operation.request_body.is_some() {
                add_problem(operation, StatusCode::BAD_REQUEST, "The body is not JSON");
                add_problem(
                    operation,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The body is larger than BODY_LIMIT",
                );
                add_problem(
                    operation,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "The body is not application/json",
                );
                add_problem(
                    operation,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "A field is missing, of the wrong type or invalid",
                );
            }
            if operation.security.is_some() {
                add_problem(
                    operation,
                    StatusCode::UNAUTHORIZED,
                    "No access token, or one that is not valid",
                );
            }
            if limit.is_some() {
                add_problem(
                    operation,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests: try again after Retry-After",
                );
            }
            problems_as_problem_json(operation);
        }
    }
    let route = match limit {
        Some(limit) => limit.guard(route),
        None => route,
    };
    (schemas, paths, route)
}

/// The document's frame: its title, the problem schema and the access-token scheme.
pub fn base() -> OpenApi {
    let mut components = Components::new();
    components.schemas.insert("Problem".to_owned(), Problem::schema());
    components.security_schemes.insert(
        BEARER.to_owned(),
        RefOr::T(SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("An access token from POST /api/sessions"))
                .build(),
        )),
    );
    let mut document = OpenApi::new(
        utoipa::openapi::Info::new("dozen", env!("CARGO_PKG_VERSION")),
        Paths::new(),
    );
    document.components = Some(components);
    document
}

/// Add a problem answer with `status` to `operation` unless it documents that status already.
fn add_problem(operation: &mut Operation, status: StatusCode, description: &str) {
    operation
        .responses
        .responses
        .entry(status.as_u16().to_string())
        .or_insert_with(|| {
            RefOr::T(
                Response::builder()
                    .description(description)
                    .content(PROBLEM, Content::new(Some(Ref::from_schema_name("Problem"))))
                    .build(),
            )
        });
}

/// Every error answer is a problem body, whose media type is `application/problem+json`; the
/// services' handlers describe it as plain JSON.
fn problems_as_problem_json(operation: &mut Operation) {
    for (status, response) in &mut operation.responses.responses {
        let RefOr::T(response) = response else { continue };
        if !status.starts_with(['4', '5']) {
            continue;
        }
        if let Some(content) = response.content.shift_remove("application/json") {
            response.content.insert(PROBLEM.to_owned(), content);
        }
    }
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}
