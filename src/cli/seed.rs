//! `keystone seed` (operations.md §4.9): realistic random demo data for demos, frontend work
//! and benchmarks, written in one transaction.
//!
//! The data is planned in memory first (pure and deterministic: ChaCha8 seeded with `--seed`,
//! every date relative to `--as-of`, default today in UTC), then written. The same seed,
//! `--as-of` date and binary give the same rows in a fresh database. Names that already exist
//! in the database get a numeric suffix, so seeding twice adds a second data set instead of
//! failing. Seeded accounts have unusable passwords (they cannot log in; set one with
//! `keystone user set-password`).

use crate::config::{Config, Engine};
use crate::infra::uploads::{SUBDIR, UploadDir};
use crate::on_tx;
use crate::store::Tx;
use crate::web::api::teams::slugify;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use clap::Args;
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `keystone seed` (ranges are inclusive `MIN MAX` pairs).
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Seed of the random generator (same seed and binary, same data)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Staff users
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub n_staff: u32,
    /// Clusters
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub n_clusters: u32,
    /// Teams
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub n_teams: u32,
    /// Members per team: one owner plus random-role members, all non-staff
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [3, 5])]
    pub n_team_members: Vec<u32>,
    /// Grants per team
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [4, 8])]
    pub n_team_grants: Vec<u32>,
    /// Publications per team
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [4, 8])]
    pub n_team_pubs: Vec<u32>,
    /// Allocation requests per team (submitter: a random owner or admin)
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [4, 8])]
    pub n_team_reqs: Vec<u32>,
    /// Resource allocations per request, on distinct clusters
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [1, 5])]
    pub n_req_clusters: Vec<u32>,
    /// Accepted and ignored (job records no longer exist)
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [0, 30])]
    pub n_req_jobs: Vec<u32>,
    /// Team grants attached per request
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [1, 2])]
    pub n_req_grants: Vec<u32>,
    /// Team publications attached per request
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [1, 2])]
    pub n_req_pubs: Vec<u32>,
    /// File attachments per request (files written to upload.dir)
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [0, 2])]
    pub n_req_attachments: Vec<u32>,
    /// Comments per request by team members or staff (half of the staff comments private)
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [0, 4])]
    pub n_req_comments: Vec<u32>,
    /// Staff assignees per request; non-pending requests get one review per assignee
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [1, 2])]
    pub n_req_reviewers: Vec<u32>,
    /// Notifications per generated team member, plus a default preference
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [10, 15])]
    pub n_user_notifications: Vec<u32>,
    /// Date the data is relative to (default: today in UTC); with --seed it makes the data
    /// identical on any day
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub as_of: Option<NaiveDate>,
}

/// An inclusive `MIN MAX` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Smallest count drawn.
    pub min: u32,
    /// Largest count drawn.
    pub max: u32,
}

/// The validated sizes of a run: each field is the option of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    pub staff: u32,
    pub clusters: u32,
    pub teams: u32,
    pub team_members: Range,
    pub team_grants: Range,
    pub team_pubs: Range,
    pub team_reqs: Range,
    pub req_clusters: Range,
    pub req_grants: Range,
    pub req_pubs: Range,
    pub req_attachments: Range,
    pub req_comments: Range,
    pub req_reviewers: Range,
    pub user_notifications: Range,
}

impl SeedArgs {
    /// The sizes, or a usage error naming the option whose MIN exceeds its MAX.
    pub fn sizes(&self) -> Result<Sizes, String> {
        let range = |option: &str, v: &[u32]| -> Result<Range, String> {
            match *v {
                [min, max] if min <= max => Ok(Range { min, max }),
                [min, max] => Err(format!(
                    "invalid range for '--{option} <MIN> <MAX>': MIN ({min}) is greater than MAX ({max})"
                )),
                _ => Err(format!(
                    "'--{option}' takes exactly two values (MIN MAX) and may be given once"
                )),
            }
        };
        range("n-req-jobs", &self.n_req_jobs)?;
        Ok(Sizes {
            staff: self.n_staff,
            clusters: self.n_clusters,
            teams: self.n_teams,
            team_members: range("n-team-members", &self.n_team_members)?,
            team_grants: range("n-team-grants", &self.n_team_grants)?,
            team_pubs: range("n-team-pubs", &self.n_team_pubs)?,
            team_reqs: range("n-team-reqs", &self.n_team_reqs)?,
            req_clusters: range("n-req-clusters", &self.n_req_clusters)?,
            req_grants: range("n-req-grants", &self.n_req_grants)?,
            req_pubs: range("n-req-pubs", &self.n_req_pubs)?,
            req_attachments: range("n-req-attachments", &self.n_req_attachments)?,
            req_comments: range("n-req-comments", &self.n_req_comments)?,
            req_reviewers: range("n-req-reviewers", &self.n_req_reviewers)?,
            user_notifications: range("n-user-notifications", &self.n_user_notifications)?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Word lists
// ---------------------------------------------------------------------------------------

#[rustfmt::skip]
const FIRST_NAMES: &[&str] = &[
    "Aaliyah", "Adam", "Aisha", "Alejandro", "Amara", "Andrew", "Anika", "Ben", "Carlos",
    "Chen", "Chloe", "Daniel", "Deepa", "Diego", "Elena", "Emeka", "Emily", "Farah", "Fatima",
    "Gabriel", "Grace", "Hana", "Hiroshi", "Ines", "Isaac", "Jamal", "Jana", "Javier", "Jin",
    "Julia", "Kai", "Karim", "Laura", "Lena", "Liam", "Lucia", "Malik", "Maria", "Mateo", "Mei",
    "Mohammed", "Nadia", "Noah", "Nora", "Olga", "Omar", "Priya", "Rafael", "Ravi", "Rosa",
    "Sara", "Sean", "Sofia", "Tariq", "Thomas", "Uma", "Victor", "Wei", "Yara", "Yusuf", "Zoe",
];

#[rustfmt::skip]
const LAST_NAMES: &[&str] = &[
    "Abara", "Alvarez", "Anderson", "Bauer", "Becker", "Brown", "Castillo", "Chen", "Cohen",
    "Costa", "Das", "Dubois", "Edwards", "Fischer", "Garcia", "Gupta", "Hansen", "Hernandez",
    "Ito", "Jensen", "Johnson", "Kaur", "Khan", "Kim", "Kowalski", "Larsen", "Lee", "Lopez",
    "Martin", "Mensah", "Meyer", "Moreau", "Nakamura", "Nguyen", "Novak", "Okafor", "Olsen",
    "Park", "Patel", "Petrov", "Ramirez", "Rossi", "Sato", "Schmidt", "Silva", "Singh", "Smith",
    "Suzuki", "Tanaka", "Taylor", "Wagner", "Wang", "Williams", "Wong", "Yamamoto", "Zhang",
];

#[rustfmt::skip]
const DEPARTMENTS: &[&str] = &[
    "Astronomy", "Biology", "Chemical Engineering", "Chemistry", "Civil Engineering",
    "Computer Science", "Earth Sciences", "Economics", "Electrical Engineering", "Mathematics",
    "Mechanical Engineering", "Medicine", "Neuroscience", "Physics", "Psychology", "Statistics",
];

#[rustfmt::skip]
const ACADEMIC_ROLES: &[&str] = &[
    "Professor", "Associate Professor", "Assistant Professor", "Research Scientist",
    "Postdoctoral Researcher", "Graduate Student", "Undergraduate Researcher", "Lab Manager",
];

#[rustfmt::skip]
const STAFF_ROLES: &[&str] = &[
    "HPC Consultant", "Research Software Engineer", "Systems Administrator",
    "Allocation Coordinator", "User Support Specialist", "Director of Research Computing",
];

#[rustfmt::skip]
const FIELDS: &[&str] = &[
    "Quantum Materials", "Computational Biology", "Climate Dynamics", "Astrophysics",
    "Machine Learning", "Molecular Dynamics", "Genomics", "Fluid Mechanics", "Neuroimaging",
    "Particle Physics", "Computational Chemistry", "Seismology", "Bioinformatics",
    "Network Science", "Combustion Modeling", "Protein Design", "Econometrics",
    "Materials Informatics", "Oceanography", "Computer Vision", "Natural Language Processing",
    "Epidemiology", "Plasma Physics", "Structural Engineering",
];

#[rustfmt::skip]
const TEAM_KINDS: &[&str] = &[
    "Lab", "Group", "Research Group", "Collaboratory", "Initiative", "Center",
];

#[rustfmt::skip]
const METHODS: &[&str] = &[
    "GPU-accelerated simulation", "large-scale molecular dynamics", "deep neural networks",
    "Monte Carlo sampling", "finite element analysis", "density functional theory",
    "high-throughput screening", "spectral methods", "ensemble forecasting",
    "graph neural networks", "adaptive mesh refinement", "Bayesian inference",
];

#[rustfmt::skip]
const GOALS: &[&str] = &[
    "Understanding", "Predicting", "Characterizing", "Modeling", "Accelerating", "Scaling",
    "Quantifying uncertainty in", "Discovering", "Simulating", "Optimizing",
];

#[rustfmt::skip]
const SUBJECTS: &[&str] = &[
    "protein folding pathways", "turbulent boundary layers", "galaxy cluster formation",
    "battery electrolyte stability", "regional precipitation extremes",
    "gene regulatory networks", "earthquake rupture dynamics", "catalyst surface reactions",
    "neural population activity", "dark matter halos", "urban heat islands",
    "antibiotic resistance evolution", "fusion plasma instabilities", "polymer self-assembly",
];

const AGENCIES: &[(&str, &str)] = &[
    ("National Science Foundation", "NSF"),
    ("National Institutes of Health", "NIH"),
    ("Department of Energy", "DOE"),
    ("Department of Defense", "DOD"),
    ("NASA", "NASA"),
    ("NOAA", "NOAA"),
    ("Simons Foundation", "SF"),
    ("Sloan Foundation", "APSF"),
];

#[rustfmt::skip]
const JOURNALS: &[&str] = &[
    "Physical Review Letters", "Nature Communications", "Journal of Chemical Physics",
    "Bioinformatics", "Astrophysical Journal", "Journal of Computational Physics",
    "PLOS Computational Biology", "Geophysical Research Letters", "Science Advances",
    "Journal of Machine Learning Research", "Proceedings of SC", "Neuron",
];

const CLUSTER_NAMES: &[(&str, &str)] = &[
    ("smp", "Shared-memory nodes for serial and threaded jobs"),
    ("gpu", "NVIDIA GPU nodes for accelerated workloads"),
    (
        "mpi",
        "Infiniband-connected nodes for tightly coupled MPI jobs",
    ),
    (
        "htc",
        "High-throughput nodes for many small independent jobs",
    ),
    ("himem", "Large-memory nodes with up to 4 TB of RAM"),
    ("teach", "Nodes reserved for courses and workshops"),
    ("viz", "Visualization nodes with remote desktop access"),
];

#[rustfmt::skip]
const COMMENTS: &[&str] = &[
    "Could you share scaling results for the largest job size?",
    "We updated the resource justification with the latest benchmarks.",
    "Please confirm the storage requirements for the output data.",
    "The requested GPU hours look reasonable given the model size.",
    "Can you clarify how the allocation will be split between students?",
    "Thanks, the revised timeline works for us.",
    "We attached the data management plan as requested.",
    "This request overlaps with an active allocation; please explain the difference.",
    "Approved pending confirmation of the funding source.",
    "Our code now checkpoints every hour, so preemption is not an issue.",
];

const GENERAL_SUBJECTS: &[(&str, &str)] = &[
    (
        "Scheduled maintenance this weekend",
        "All clusters will be unavailable on Saturday from 08:00 to 16:00 for scheduled maintenance.",
    ),
    (
        "New software modules available",
        "Updated compilers, MPI libraries and Python environments are now available as modules.",
    ),
    (
        "Scratch purge policy reminder",
        "Files on scratch storage that have not been accessed for 90 days will be removed.",
    ),
    (
        "Allocation renewal period is open",
        "Teams with allocations expiring this quarter can now submit renewal requests.",
    ),
    (
        "Workshop: introduction to GPU computing",
        "Join our hands-on workshop on porting applications to GPUs next month.",
    ),
];

const ATTACHMENTS: &[(&str, &str)] = &[
    ("project-summary", "md"),
    ("resource-justification", "txt"),
    ("scaling-results", "csv"),
    ("data-management-plan", "md"),
    ("software-requirements", "txt"),
];

/// Characters of the unusable passwords' random part.
const PASSWORD_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

// ---------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------

/// Names already used in the database; generated names avoid them.
#[derive(Debug, Clone, Default)]
struct Taken {
    usernames: HashSet<String>,
    team_names: HashSet<String>,
    team_slugs: HashSet<String>,
    cluster_names: HashSet<String>,
    dois: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct User {
    username: String,
    password: String,
    first_name: String,
    last_name: String,
    email: String,
    department: String,
    role: String,
    is_staff: bool,
    date_joined: DateTime<Utc>,
    last_login: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Cluster {
    name: String,
    description: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Team {
    name: String,
    slug: String,
    /// (user index, role code); the first one is the owner.
    members: Vec<(usize, &'static str)>,
}

#[derive(Debug, Clone, PartialEq)]
struct Grant {
    team: usize,
    title: String,
    agency: String,
    pi: String,
    /// Decimal text with two places (numeric(14,2)).
    amount: String,
    grant_number: String,
    start_date: NaiveDate,
    end_date: NaiveDate,
    description: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Publication {
    team: usize,
    title: String,
    abstract_text: String,
    submitted: Option<NaiveDate>,
    published: Option<NaiveDate>,
    journal: String,
    doi: String,
    volume: String,
    issue: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Allocation {
    cluster: usize,
    requested: i32,
    awarded: Option<i32>,
    final_usage: Option<i32>,
}

#[derive(Debug, Clone, PartialEq)]
struct Review {
    reviewer: usize,
    status: &'static str,
    submitted: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
struct Attachment {
    /// File name in the attachments directory (the `file` value is `allocations/<stored>`).
    stored: String,
    name: String,
    uploaded: DateTime<Utc>,
    content: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Comment {
    user: usize,
    content: String,
    created: DateTime<Utc>,
    private: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Request {
    team: usize,
    submitter: usize,
    title: String,
    description: String,
    submitted: DateTime<Utc>,
    active: NaiveDate,
    expire: NaiveDate,
    status: &'static str,
    assignees: Vec<usize>,
    grants: Vec<usize>,
    publications: Vec<usize>,
    allocations: Vec<Allocation>,
    reviews: Vec<Review>,
    attachments: Vec<Attachment>,
    comments: Vec<Comment>,
}

#[derive(Debug, Clone, PartialEq)]
enum NoticeKind {
    General {
        subject: &'static str,
        body: &'static str,
    },
    /// Upcoming expiry of a request (index), `days` before it.
    Upcoming { request: usize, days: i64 },
    /// Past expiry of a request (index).
    Expired { request: usize },
}

#[derive(Debug, Clone, PartialEq)]
struct Notice {
    user: usize,
    kind: NoticeKind,
    time: DateTime<Utc>,
    read: bool,
}

/// Everything one run writes, with references as indexes into its own vectors.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Staff first, then the team members.
    users: Vec<User>,
    staff: usize,
    clusters: Vec<Cluster>,
    teams: Vec<Team>,
    grants: Vec<Grant>,
    publications: Vec<Publication>,
    requests: Vec<Request>,
    /// Users given a default notification preference.
    preferences: Vec<usize>,
    notices: Vec<Notice>,
}

fn between(rng: &mut ChaCha8Rng, r: Range) -> u32 {
    rng.random_range(r.min..=r.max)
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    // u32 indexes keep the draws the same on 32- and 64-bit platforms.
    let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
    &items[rng.random_range(0..n) as usize]
}

/// `k` distinct indexes below `n` (fewer when `n` is smaller), in drawn order.
fn distinct(rng: &mut ChaCha8Rng, n: usize, k: u32) -> Vec<usize> {
    let k = (k as usize).min(n);
    index::sample(rng, n, k).into_vec()
}

/// A time up to `max_days` days before `base`, whole seconds.
fn before(
    rng: &mut ChaCha8Rng,
    base: DateTime<Utc>,
    min_days: i64,
    max_days: i64,
) -> DateTime<Utc> {
    base - Duration::seconds(rng.random_range(min_days * 86_400..=max_days * 86_400))
}

/// A time up to `max_days` days after `t`, but never after `base`.
fn after(
    rng: &mut ChaCha8Rng,
    t: DateTime<Utc>,
    max_days: i64,
    base: DateTime<Utc>,
) -> DateTime<Utc> {
    (t + Duration::seconds(rng.random_range(60..=max_days.max(1) * 86_400))).min(base)
}

/// `base`, or `base` with the first free numeric suffix.
fn unique(base: &str, taken: &mut HashSet<String>, sep: &str) -> String {
    if taken.insert(base.to_string()) {
        return base.to_string();
    }
    let mut n: u64 = 2;
    loop {
        let candidate = format!("{base}{sep}{n}");
        if taken.insert(candidate.clone()) {
            return candidate;
        }
        n += 1;
    }
}

fn title_case_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn topic(rng: &mut ChaCha8Rng) -> String {
    format!("{} {}", pick(rng, GOALS), pick(rng, SUBJECTS))
}

fn paragraph(rng: &mut ChaCha8Rng, sentences: u32) -> String {
    let mut out = Vec::new();
    for _ in 0..sentences {
        let s = match rng.random_range(0..4u32) {
            0 => format!(
                "We will use {} to study {}.",
                pick(rng, METHODS),
                pick(rng, SUBJECTS)
            ),
            1 => format!(
                "{} requires {} at a scale beyond departmental resources.",
                title_case_first(&topic(rng)),
                pick(rng, METHODS)
            ),
            2 => format!(
                "Preliminary runs show near-linear scaling up to {} cores.",
                rng.random_range(2..=64u32) * 64
            ),
            _ => format!(
                "Results will inform ongoing work in {}.",
                pick(rng, FIELDS).to_lowercase()
            ),
        };
        out.push(s);
    }
    out.join(" ")
}

fn password(rng: &mut ChaCha8Rng) -> String {
    // Django's unusable password: `!` and text no hash can match.
    let random: String = (0..40)
        .map(|_| char::from(*pick(rng, PASSWORD_CHARS)))
        .collect();
    format!("!{random}")
}

fn user(rng: &mut ChaCha8Rng, taken: &mut Taken, base: DateTime<Utc>, staff: bool) -> User {
    let first = *pick(rng, FIRST_NAMES);
    let last = *pick(rng, LAST_NAMES);
    let stem = format!("{}{}", first.chars().next().unwrap_or('x'), last).to_lowercase();
    let username = unique(&stem, &mut taken.usernames, "");
    let (department, role) = if staff {
        (
            "Research Computing".to_string(),
            pick(rng, STAFF_ROLES).to_string(),
        )
    } else {
        (
            pick(rng, DEPARTMENTS).to_string(),
            pick(rng, ACADEMIC_ROLES).to_string(),
        )
    };
    let date_joined = before(rng, base, 30, 1500);
    let last_login = rng.random_bool(0.7).then(|| before(rng, base, 0, 29));
    User {
        email: format!("{username}@example.org"),
        username,
        password: password(rng),
        first_name: first.to_string(),
        last_name: last.to_string(),
        department,
        role,
        is_staff: staff,
        date_joined,
        last_login,
    }
}

fn member_role(rng: &mut ChaCha8Rng) -> &'static str {
    match rng.random_range(0..10u32) {
        0 => "OW",
        1..=3 => "AD",
        _ => "MB",
    }
}

fn request_status(rng: &mut ChaCha8Rng) -> &'static str {
    match rng.random_range(0..20u32) {
        0..=8 => "AP",
        9..=13 => "PD",
        14..=16 => "CR",
        _ => "DC",
    }
}

fn attachment(rng: &mut ChaCha8Rng, request: &Request, base: DateTime<Utc>) -> Attachment {
    let (stem, ext) = *pick(rng, ATTACHMENTS);
    let stored: String = (0..32)
        .map(|_| char::from(*pick(rng, b"0123456789abcdef")))
        .collect();
    let content = match ext {
        "csv" => {
            let mut rows = String::from("nodes,cores,wall_hours,speedup\n");
            for nodes in [1u32, 2, 4, 8, 16] {
                let efficiency = rng.random_range(70..=99u32);
                rows.push_str(&format!(
                    "{nodes},{},{},{}.{:02}\n",
                    nodes * 64,
                    rng.random_range(1..=48u32),
                    nodes * efficiency / 100,
                    nodes * efficiency % 100
                ));
            }
            rows
        }
        "md" => format!(
            "# {}\n\n## {}\n\n{}\n",
            title_case_first(&stem.replace('-', " ")),
            request.title,
            paragraph(rng, 3)
        ),
        _ => format!("{}\n\n{}\n", request.title, paragraph(rng, 4)),
    };
    Attachment {
        stored: format!("{stored}.{ext}"),
        name: format!("{stem}.{ext}"),
        uploaded: after(rng, request.submitted, 3, base),
        content,
    }
}

/// Plans a whole data set. Pure: the same inputs give the same plan.
fn plan(seed: u64, sizes: &Sizes, as_of: NaiveDate, taken: &mut Taken) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base = as_of.and_time(NaiveTime::MIN).and_utc();
    let today = as_of;

    let mut users: Vec<User> = (0..sizes.staff)
        .map(|_| user(&mut rng, taken, base, true))
        .collect();
    let staff = users.len();

    let clusters: Vec<Cluster> = (0..sizes.clusters as usize)
        .map(|i| {
            let (name, description) = CLUSTER_NAMES
                .get(i)
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .unwrap_or_else(|| {
                    (
                        format!("cluster{}", i + 1),
                        "General-purpose compute nodes".to_string(),
                    )
                });
            Cluster {
                name: unique(&name, &mut taken.cluster_names, "-"),
                description,
            }
        })
        .collect();

    let mut teams = Vec::new();
    for _ in 0..sizes.teams {
        // One owner plus random-role members: never fewer than the owner.
        let count = between(&mut rng, sizes.team_members).max(1);
        let mut members = Vec::new();
        for i in 0..count {
            let role = if i == 0 { "OW" } else { member_role(&mut rng) };
            members.push((users.len(), role));
            users.push(user(&mut rng, taken, base, false));
        }
        // Named after its field, or after its owner as labs often are.
        let stem = if rng.random_bool(0.5) {
            format!("{} {}", pick(&mut rng, FIELDS), pick(&mut rng, TEAM_KINDS))
        } else {
            let owner = &users[members[0].0];
            format!("{} {}", owner.last_name, pick(&mut rng, TEAM_KINDS))
        };
        // Both the name and its slug must be new.
        let mut n = 1u64;
        let (name, slug) = loop {
            let name = if n == 1 {
                stem.clone()
            } else {
                format!("{stem} {n}")
            };
            let slug = slugify(&name);
            if !taken.team_names.contains(&name) && !taken.team_slugs.contains(&slug) {
                taken.team_names.insert(name.clone());
                taken.team_slugs.insert(slug.clone());
                break (name, slug);
            }
            n += 1;
        };
        teams.push(Team {
            name,
            slug,
            members,
        });
    }

    let mut grants = Vec::new();
    let mut team_grants: Vec<Vec<usize>> = Vec::new();
    for (t, team) in teams.iter().enumerate() {
        let mut own = Vec::new();
        for _ in 0..between(&mut rng, sizes.team_grants) {
            let (agency, abbreviation) = *pick(&mut rng, AGENCIES);
            let pi = &users[team.members[0].0];
            let start_date = today - Duration::days(rng.random_range(0..=1460));
            let cents: u64 = rng.random_range(1_000_000..=250_000_000);
            let year = start_date.format("%Y");
            own.push(grants.len());
            grants.push(Grant {
                team: t,
                title: format!(
                    "{} through {}",
                    title_case_first(&topic(&mut rng)),
                    pick(&mut rng, METHODS)
                ),
                agency: agency.to_string(),
                pi: format!("{} {}", pi.first_name, pi.last_name),
                amount: format!("{}.{:02}", cents / 100, cents % 100),
                grant_number: format!(
                    "{abbreviation}-{year}-{:05}",
                    rng.random_range(0..100_000u32)
                ),
                end_date: start_date + Duration::days(rng.random_range(365..=1825)),
                start_date,
                description: paragraph(&mut rng, 2),
            });
        }
        team_grants.push(own);
    }

    let mut publications = Vec::new();
    let mut team_pubs: Vec<Vec<usize>> = Vec::new();
    for t in 0..teams.len() {
        let mut own = Vec::new();
        for _ in 0..between(&mut rng, sizes.team_pubs) {
            let (submitted, published) = match rng.random_range(0..10u32) {
                0 | 1 => (None, None),
                2 | 3 => (
                    Some(today - Duration::days(rng.random_range(1..=200))),
                    None,
                ),
                _ => {
                    let s = today - Duration::days(rng.random_range(60..=1500));
                    let p = (s + Duration::days(rng.random_range(30..=300))).min(today);
                    (Some(s), Some(p))
                }
            };
            let doi_stem = format!(
                "10.{}/ks.{}",
                rng.random_range(1000..=9999u32),
                rng.random_range(100_000..=999_999u32)
            );
            own.push(publications.len());
            publications.push(Publication {
                team: t,
                title: title_case_first(&format!(
                    "{} with {}",
                    topic(&mut rng),
                    pick(&mut rng, METHODS)
                )),
                abstract_text: paragraph(&mut rng, 4),
                submitted,
                published,
                journal: pick(&mut rng, JOURNALS).to_string(),
                doi: unique(&doi_stem, &mut taken.dois, "."),
                volume: rng.random_range(1..=120u32).to_string(),
                issue: rng.random_range(1..=12u32).to_string(),
            });
        }
        team_pubs.push(own);
    }

    let mut requests = Vec::new();
    for (t, team) in teams.iter().enumerate() {
        let privileged: Vec<usize> = team
            .members
            .iter()
            .filter(|(_, role)| *role != "MB")
            .map(|(u, _)| *u)
            .collect();
        let members: Vec<usize> = team.members.iter().map(|(u, _)| *u).collect();
        let authors: Vec<usize> = members.iter().copied().chain(0..staff).collect();
        for _ in 0..between(&mut rng, sizes.team_reqs) {
            let submitted = before(&mut rng, base, 1, 730);
            let active = submitted.date_naive() + Duration::days(rng.random_range(1..=30));
            let expire = active + Duration::days(*pick(&mut rng, &[90, 180, 365]));
            let status = request_status(&mut rng);
            let mut request = Request {
                team: t,
                submitter: *pick(&mut rng, &privileged),
                title: title_case_first(&topic(&mut rng)),
                description: {
                    let sentences = rng.random_range(3..=6);
                    paragraph(&mut rng, sentences)
                },
                submitted,
                active,
                expire,
                status,
                assignees: Vec::new(),
                grants: Vec::new(),
                publications: Vec::new(),
                allocations: Vec::new(),
                reviews: Vec::new(),
                attachments: Vec::new(),
                comments: Vec::new(),
            };
            let k = between(&mut rng, sizes.req_reviewers);
            request.assignees = distinct(&mut rng, staff, k);
            if status != "PD" {
                for &reviewer in &request.assignees {
                    let submitted = after(&mut rng, submitted, 14, base);
                    request.reviews.push(Review {
                        reviewer,
                        status,
                        submitted,
                    });
                }
            }
            let k = between(&mut rng, sizes.req_clusters);
            for cluster in distinct(&mut rng, clusters.len(), k) {
                let requested = rng.random_range(10..=1000i32) * 100;
                let awarded = (status == "AP").then(|| rng.random_range(0..=requested / 100) * 100);
                let final_usage = match awarded {
                    Some(a) if expire <= today => Some(rng.random_range(0..=a / 100) * 100),
                    _ => None,
                };
                request.allocations.push(Allocation {
                    cluster,
                    requested,
                    awarded,
                    final_usage,
                });
            }
            let k = between(&mut rng, sizes.req_grants);
            request.grants = distinct(&mut rng, team_grants[t].len(), k)
                .into_iter()
                .map(|i| team_grants[t][i])
                .collect();
            let k = between(&mut rng, sizes.req_pubs);
            request.publications = distinct(&mut rng, team_pubs[t].len(), k)
                .into_iter()
                .map(|i| team_pubs[t][i])
                .collect();
            for _ in 0..between(&mut rng, sizes.req_attachments) {
                let a = attachment(&mut rng, &request, base);
                request.attachments.push(a);
            }
            for _ in 0..between(&mut rng, sizes.req_comments) {
                let author = *pick(&mut rng, &authors);
                let private = users[author].is_staff && rng.random_bool(0.5);
                request.comments.push(Comment {
                    user: author,
                    content: pick(&mut rng, COMMENTS).to_string(),
                    created: after(&mut rng, submitted, 20, base),
                    private,
                });
            }
            requests.push(request);
        }
    }

    // Notifications for the generated team members, about their own team's requests.
    let mut preferences = Vec::new();
    let mut notices = Vec::new();
    let mut team_requests: Vec<Vec<usize>> = vec![Vec::new(); teams.len()];
    for (i, r) in requests.iter().enumerate() {
        if r.status == "AP" {
            team_requests[r.team].push(i);
        }
    }
    for (t, team) in teams.iter().enumerate() {
        for &(u, _) in &team.members {
            preferences.push(u);
            // (type, request, days): the unique key of a notification's metadata.
            let mut used: BTreeSet<(u8, usize, i64)> = BTreeSet::new();
            for _ in 0..between(&mut rng, sizes.user_notifications) {
                let time = before(&mut rng, base, 0, 180);
                let read = rng.random_bool(0.3);
                let wanted = rng.random_range(0..3u32);
                let mut kind = None;
                if wanted > 0 && !team_requests[t].is_empty() {
                    let request = *pick(&mut rng, &team_requests[t]);
                    let candidate = if wanted == 1 {
                        let days = *pick(&mut rng, &[30i64, 14, 7]);
                        (1u8, request, days, NoticeKind::Upcoming { request, days })
                    } else {
                        (2u8, request, 0, NoticeKind::Expired { request })
                    };
                    if used.insert((candidate.0, candidate.1, candidate.2)) {
                        kind = Some(candidate.3);
                    }
                }
                let kind = kind.unwrap_or_else(|| {
                    let (subject, body) = *pick(&mut rng, GENERAL_SUBJECTS);
                    NoticeKind::General { subject, body }
                });
                notices.push(Notice {
                    user: u,
                    kind,
                    time,
                    read,
                });
            }
        }
    }

    Plan {
        users,
        staff,
        clusters,
        teams,
        grants,
        publications,
        requests,
        preferences,
        notices,
    }
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum SeedError {
    #[error("{0}")]
    Open(String),
    #[error("{0}")]
    Db(#[from] crate::store::DbError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("cannot write attachment {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Prints `  Generating <thing>... ` now and `OK` when `f` succeeds (`FAILED` otherwise).
async fn stage<T, F>(thing: &str, f: F) -> Result<T, SeedError>
where
    F: std::future::Future<Output = Result<T, SeedError>>,
{
    print!("  Generating {thing}... ");
    let _ = std::io::stdout().flush();
    let out = f.await;
    println!("{}", if out.is_ok() { "OK" } else { "FAILED" });
    out
}

async fn load_taken(tx: &mut Tx) -> Result<Taken, SeedError> {
    let usernames: Vec<String> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT username FROM users_user"
    )
    .fetch_all(c)
    .await)?;
    let teams: Vec<(String, String)> =
        on_tx!(tx, |c| sqlx::query_as("SELECT name, slug FROM users_team")
            .fetch_all(c)
            .await)?;
    let clusters: Vec<String> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT name FROM allocations_cluster"
    )
    .fetch_all(c)
    .await)?;
    let dois: Vec<String> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT doi FROM research_products_publication WHERE doi IS NOT NULL"
    )
    .fetch_all(c)
    .await)?;
    Ok(Taken {
        usernames: usernames.into_iter().collect(),
        team_names: teams.iter().map(|(n, _)| n.clone()).collect(),
        team_slugs: teams.into_iter().map(|(_, s)| s).collect(),
        cluster_names: clusters.into_iter().collect(),
        dois: dois.into_iter().collect(),
    })
}

/// Database ids of the planned rows, by plan index.
#[derive(Default)]
struct Ids {
    users: Vec<i64>,
    clusters: Vec<i64>,
    teams: Vec<i64>,
    grants: Vec<i64>,
    publications: Vec<i64>,
    requests: Vec<i64>,
}

async fn write_users(tx: &mut Tx, users: &[User], ids: &mut Vec<i64>) -> Result<(), SeedError> {
    for u in users {
        let id: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO users_user (username, password, first_name, last_name, email, \
             department, role, is_active, is_staff, is_superuser, is_ldap_user, date_joined, \
             last_login) VALUES ($1, $2, $3, $4, $5, $6, $7, TRUE, $8, FALSE, FALSE, $9, $10) \
             RETURNING id"
        )
        .bind(&u.username)
        .bind(&u.password)
        .bind(&u.first_name)
        .bind(&u.last_name)
        .bind(&u.email)
        .bind(&u.department)
        .bind(&u.role)
        .bind(u.is_staff)
        .bind(u.date_joined)
        .bind(u.last_login)
        .fetch_one(c)
        .await)?;
        ids.push(id);
    }
    Ok(())
}

async fn write_clusters(tx: &mut Tx, plan: &Plan, ids: &mut Ids) -> Result<(), SeedError> {
    for cl in &plan.clusters {
        let id: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO allocations_cluster (name, description, enabled, access_mode) \
             VALUES ($1, $2, TRUE, 'OP') RETURNING id"
        )
        .bind(&cl.name)
        .bind(&cl.description)
        .fetch_one(c)
        .await)?;
        ids.clusters.push(id);
    }
    Ok(())
}

async fn write_teams(tx: &mut Tx, plan: &Plan, ids: &mut Ids) -> Result<(), SeedError> {
    write_users(tx, &plan.users[plan.staff..], &mut ids.users).await?;
    for team in &plan.teams {
        let team_id: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO users_team (name, slug, is_active) VALUES ($1, $2, TRUE) RETURNING id"
        )
        .bind(&team.name)
        .bind(&team.slug)
        .fetch_one(c)
        .await)?;
        ids.teams.push(team_id);
        for (user, role) in &team.members {
            let user_id = ids.users[*user];
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO users_membership (role, user_id, team_id) VALUES ($1, $2, $3)"
            )
            .bind(role)
            .bind(user_id)
            .bind(team_id)
            .execute(c)
            .await
            .map(|_| ()))?;
        }
    }
    Ok(())
}

async fn write_grants(tx: &mut Tx, plan: &Plan, ids: &mut Ids) -> Result<(), SeedError> {
    for g in &plan.grants {
        let team_id = ids.teams[g.team];
        let id: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO research_products_grant (title, agency, pi, amount, grant_number, \
             start_date, end_date, description, team_id) \
             VALUES ($1, $2, $3, CAST($4 AS NUMERIC), $5, $6, $7, $8, $9) RETURNING id"
        )
        .bind(&g.title)
        .bind(&g.agency)
        .bind(&g.pi)
        .bind(&g.amount)
        .bind(&g.grant_number)
        .bind(g.start_date)
        .bind(g.end_date)
        .bind(&g.description)
        .bind(team_id)
        .fetch_one(c)
        .await)?;
        ids.grants.push(id);
    }
    Ok(())
}

async fn write_publications(tx: &mut Tx, plan: &Plan, ids: &mut Ids) -> Result<(), SeedError> {
    for p in &plan.publications {
        let team_id = ids.teams[p.team];
        let id: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO research_products_publication (title, abstract, published, submitted, \
             journal, doi, volume, issue, team_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING id"
        )
        .bind(&p.title)
        .bind(&p.abstract_text)
        .bind(p.published)
        .bind(p.submitted)
        .bind(&p.journal)
        .bind(&p.doi)
        .bind(&p.volume)
        .bind(&p.issue)
        .bind(team_id)
        .fetch_one(c)
        .await)?;
        ids.publications.push(id);
    }
    Ok(())
}

async fn link(tx: &mut Tx, sql: &'static str, a: i64, b: i64) -> Result<(), SeedError> {
    on_tx!(tx, |c| sqlx::query(sql)
        .bind(a)
        .bind(b)
        .execute(c)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// Writes an attachment's file into the attachments directory of `upload.dir` through the
/// storage code the API uses, and returns its `file` value: the planned name, or
/// `<name>-<n>.<ext>` when an entry of that name exists (an earlier run with the same seed).
/// Never follows or replaces an existing entry; a symlinked attachments directory is refused.
fn write_file(
    root: &Path,
    uploads: &mut Option<UploadDir>,
    a: &Attachment,
    written: &mut Vec<PathBuf>,
) -> Result<String, SeedError> {
    let fail = |path: &Path, source| SeedError::File {
        path: path.display().to_string(),
        source,
    };
    let dir = match uploads {
        Some(dir) => dir,
        None => {
            uploads.insert(UploadDir::open(root, true).map_err(|e| fail(&root.join(SUBDIR), e))?)
        }
    };
    let (stem, ext) = a
        .stored
        .rsplit_once('.')
        .unwrap_or((a.stored.as_str(), "txt"));
    let mut n = 1u64;
    loop {
        let name = if n == 1 {
            a.stored.clone()
        } else {
            format!("{stem}-{n}.{ext}")
        };
        match dir.create(&name, &mut a.content.as_bytes()) {
            Ok(file) => {
                written.push(dir.path().join(&name));
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(fail(&dir.path().join(&name), e)),
        }
    }
}

async fn write_requests(
    tx: &mut Tx,
    plan: &Plan,
    ids: &mut Ids,
    upload_root: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), SeedError> {
    // Opened (and created) at the first attachment.
    let mut uploads = None;
    for r in &plan.requests {
        let request_id: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO allocations_allocationrequest (title, description, submitted, active, \
             expire, status, submitter_id, team_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id"
        )
        .bind(&r.title)
        .bind(&r.description)
        .bind(r.submitted)
        .bind(r.active)
        .bind(r.expire)
        .bind(r.status)
        .bind(ids.users[r.submitter])
        .bind(ids.teams[r.team])
        .fetch_one(c)
        .await)?;
        ids.requests.push(request_id);
        for &u in &r.assignees {
            link(
                tx,
                "INSERT INTO allocations_allocationrequest_assignees (allocationrequest_id, user_id) \
                 VALUES ($1, $2)",
                request_id,
                ids.users[u],
            )
            .await?;
        }
        for &g in &r.grants {
            link(
                tx,
                "INSERT INTO allocations_allocationrequest_grants (allocationrequest_id, grant_id) \
                 VALUES ($1, $2)",
                request_id,
                ids.grants[g],
            )
            .await?;
        }
        for &p in &r.publications {
            link(
                tx,
                "INSERT INTO allocations_allocationrequest_publications \
                 (allocationrequest_id, publication_id) VALUES ($1, $2)",
                request_id,
                ids.publications[p],
            )
            .await?;
        }
        for v in &r.reviews {
            let reviewer = ids.users[v.reviewer];
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO allocations_allocationreview (status, submitted, request_id, \
                 reviewer_id) VALUES ($1, $2, $3, $4)"
            )
            .bind(v.status)
            .bind(v.submitted)
            .bind(request_id)
            .bind(reviewer)
            .execute(c)
            .await
            .map(|_| ()))?;
        }
        for a in &r.allocations {
            let cluster = ids.clusters[a.cluster];
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO allocations_resourceallocation (requested, awarded, final, \
                 cluster_id, request_id) VALUES ($1, $2, $3, $4, $5)"
            )
            .bind(a.requested)
            .bind(a.awarded)
            .bind(a.final_usage)
            .bind(cluster)
            .bind(request_id)
            .execute(c)
            .await
            .map(|_| ()))?;
        }
        for a in &r.attachments {
            let file = write_file(upload_root, &mut uploads, a, written)?;
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO allocations_attachment (file, name, uploaded, request_id) \
                 VALUES ($1, $2, $3, $4)"
            )
            .bind(&file)
            .bind(&a.name)
            .bind(a.uploaded)
            .bind(request_id)
            .execute(c)
            .await
            .map(|_| ()))?;
        }
        for m in &r.comments {
            let user = ids.users[m.user];
            on_tx!(tx, |c| sqlx::query(
                "INSERT INTO allocations_comment (content, created, private, user_id, request_id) \
                 VALUES ($1, $2, $3, $4, $5)"
            )
            .bind(&m.content)
            .bind(m.created)
            .bind(m.private)
            .bind(user)
            .bind(request_id)
            .execute(c)
            .await
            .map(|_| ()))?;
        }
    }
    Ok(())
}

/// Subject, plain text, HTML and metadata (compact JSON, keys sorted) of a notification.
fn notice_texts(
    plan: &Plan,
    ids: &Ids,
    n: &Notice,
) -> (&'static str, String, String, String, Option<String>) {
    let user = &plan.users[n.user];
    let greeting = format!("Dear {},", user.first_name);
    match &n.kind {
        NoticeKind::General { subject, body } => (
            "GM",
            subject.to_string(),
            format!("{greeting}\n\n{body}"),
            format!("<p>{greeting}</p>\n<p>{body}</p>"),
            None,
        ),
        NoticeKind::Upcoming { request, days } => {
            let r = &plan.requests[*request];
            let id = ids.requests[*request];
            let body = format!(
                "Your HPC allocation #{id} \"{}\" expires on {} ({days} days from this notice).",
                r.title, r.expire
            );
            (
                "RE",
                format!("Your HPC allocation #{id} is expiring soon"),
                format!("{greeting}\n\n{body}"),
                format!("<p>{greeting}</p>\n<p>{body}</p>"),
                Some(format!(r#"{{"days_to_expire":{days},"request_id":{id}}}"#)),
            )
        }
        NoticeKind::Expired { request } => {
            let r = &plan.requests[*request];
            let id = ids.requests[*request];
            let body = format!(
                "Your HPC allocation #{id} \"{}\" expired on {}.",
                r.title, r.expire
            );
            (
                "RD",
                format!("Your HPC allocation #{id} has expired"),
                format!("{greeting}\n\n{body}"),
                format!("<p>{greeting}</p>\n<p>{body}</p>"),
                Some(format!(r#"{{"request_id":{id}}}"#)),
            )
        }
    }
}

async fn write_notifications(tx: &mut Tx, plan: &Plan, ids: &Ids) -> Result<(), SeedError> {
    for &u in &plan.preferences {
        let user_id = ids.users[u];
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO notifications_preference (user_id) VALUES ($1)"
        )
        .bind(user_id)
        .execute(c)
        .await
        .map(|_| ()))?;
    }
    // metadata is jsonb on PostgreSQL and text on SQLite.
    let sql = match tx.engine() {
        Engine::Postgres => {
            "INSERT INTO notifications_notification (time, read, subject, message_text, \
             message_html, metadata, notification_type, user_id) \
             VALUES ($1, $2, $3, $4, $5, CAST($6 AS JSONB), $7, $8)"
        }
        Engine::Sqlite => {
            "INSERT INTO notifications_notification (time, read, subject, message_text, \
             message_html, metadata, notification_type, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        }
    };
    for n in &plan.notices {
        let (kind, subject, text, html, metadata) = notice_texts(plan, ids, n);
        let user_id = ids.users[n.user];
        on_tx!(tx, |c| sqlx::query(sql)
            .bind(n.time)
            .bind(n.read)
            .bind(&subject)
            .bind(&text)
            .bind(&html)
            .bind(&metadata)
            .bind(kind)
            .bind(user_id)
            .execute(c)
            .await
            .map(|_| ()))?;
    }
    Ok(())
}

/// Writes the plan in one transaction, printing the progress lines.
async fn write(
    plan: &Plan,
    upload_root: &Path,
    written: &mut Vec<PathBuf>,
    mut tx: Tx,
) -> Result<(), SeedError> {
    let mut ids = Ids::default();
    stage(
        "staff users",
        write_users(&mut tx, &plan.users[..plan.staff], &mut ids.users),
    )
    .await?;
    stage("clusters", write_clusters(&mut tx, plan, &mut ids)).await?;
    stage("teams", write_teams(&mut tx, plan, &mut ids)).await?;
    stage("grants", write_grants(&mut tx, plan, &mut ids)).await?;
    stage("publications", write_publications(&mut tx, plan, &mut ids)).await?;
    stage(
        "allocation requests",
        write_requests(&mut tx, plan, &mut ids, upload_root, written),
    )
    .await?;
    stage("notifications", write_notifications(&mut tx, plan, &ids)).await?;
    tx.commit().await?;
    Ok(())
}

/// Plans and writes one data set.
async fn generate(
    config: &Config,
    sizes: &Sizes,
    seed: u64,
    as_of: NaiveDate,
    written: &mut Vec<PathBuf>,
) -> Result<(), SeedError> {
    let db = crate::roles::serve::open_database(config)
        .await
        .map_err(|e| SeedError::Open(e.to_string()))?;
    let mut tx = db.begin().await?;
    let mut taken = load_taken(&mut tx).await?;
    let plan = plan(seed, sizes, as_of, &mut taken);
    println!("Generating mock data:");
    write(&plan, &config.upload_dir(), written, tx).await
}

/// `keystone seed` / `keystone genseeddata`.
pub fn run(config: &Config, args: &SeedArgs) -> ExitCode {
    let sizes = match args.sizes() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    if args.seed.is_none() {
        eprintln!(
            "keystone: using seed {seed} (pass --seed {seed} to generate the same data again)"
        );
    }
    let as_of = args.as_of.unwrap_or_else(|| Utc::now().date_naive());
    let Ok(rt) = crate::cli::runtime() else {
        eprintln!("keystone: cannot start the async runtime");
        return ExitCode::from(1);
    };
    let mut written = Vec::new();
    let outcome = rt.block_on(async {
        tokio::select! {
            r = generate(config, &sizes, seed, as_of, &mut written) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let code = match outcome {
        Some(Ok(())) => return ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("keystone: seed failed, nothing was written: {e}");
            ExitCode::from(1)
        }
        None => {
            eprintln!("keystone: interrupted, nothing was written");
            ExitCode::from(130)
        }
    };
    // The transaction rolled back: remove the files written for it.
    for path in written {
        let _ = std::fs::remove_file(path);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        let r = |min, max| Range { min, max };
        Sizes {
            staff: 3,
            clusters: 2,
            teams: 4,
            team_members: r(2, 4),
            team_grants: r(1, 3),
            team_pubs: r(0, 2),
            team_reqs: r(2, 3),
            req_clusters: r(1, 5),
            req_grants: r(1, 2),
            req_pubs: r(1, 2),
            req_attachments: r(0, 2),
            req_comments: r(0, 4),
            req_reviewers: r(1, 5),
            user_notifications: r(2, 4),
        }
    }

    fn as_of() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 1).expect("date")
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let a = plan(7, &sizes(), as_of(), &mut Taken::default());
        let b = plan(7, &sizes(), as_of(), &mut Taken::default());
        let c = plan(8, &sizes(), as_of(), &mut Taken::default());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn counts_stay_within_ranges_and_pools() {
        let s = sizes();
        let p = plan(11, &s, as_of(), &mut Taken::default());
        assert_eq!(p.staff, 3);
        assert_eq!(p.clusters.len(), 2);
        assert_eq!(p.teams.len(), 4);
        for t in &p.teams {
            assert!((2..=4).contains(&t.members.len()));
            assert_eq!(t.members[0].1, "OW");
            assert!(t.members.iter().all(|(u, _)| !p.users[*u].is_staff));
        }
        let base = as_of().and_time(NaiveTime::MIN).and_utc();
        for r in &p.requests {
            let team = &p.teams[r.team];
            assert!(
                team.members
                    .iter()
                    .any(|(u, role)| *u == r.submitter && *role != "MB"),
                "submitter is an owner or admin"
            );
            assert!(r.active < r.expire);
            assert!(r.submitted <= base);
            // Reviewers and clusters are capped by their pools and distinct.
            assert!((1..=3).contains(&r.assignees.len()));
            assert!(r.assignees.iter().all(|u| *u < p.staff));
            assert_eq!(
                r.assignees.iter().collect::<BTreeSet<_>>().len(),
                r.assignees.len()
            );
            let clusters: BTreeSet<usize> = r.allocations.iter().map(|a| a.cluster).collect();
            assert_eq!(clusters.len(), r.allocations.len());
            assert!((1..=2).contains(&r.allocations.len()));
            assert_eq!(
                r.reviews.len(),
                if r.status == "PD" {
                    0
                } else {
                    r.assignees.len()
                }
            );
            assert!(r.grants.iter().all(|g| p.grants[*g].team == r.team));
            assert!(
                r.publications
                    .iter()
                    .all(|x| p.publications[*x].team == r.team)
            );
            assert!(
                r.comments
                    .iter()
                    .all(|c| !c.private || p.users[c.user].is_staff)
            );
            for a in &r.allocations {
                assert_eq!(a.awarded.is_some(), r.status == "AP");
                assert!(a.awarded.unwrap_or(0) <= a.requested);
                assert!(a.final_usage.unwrap_or(0) <= a.awarded.unwrap_or(0));
            }
        }
        let members: usize = p.teams.iter().map(|t| t.members.len()).sum();
        assert_eq!(p.preferences.len(), members);
        assert!(p.notices.len() >= members * 2 && p.notices.len() <= members * 4);
    }

    #[test]
    fn names_avoid_those_already_taken() {
        let mut taken = Taken::default();
        let first = plan(3, &sizes(), as_of(), &mut taken);
        let second = plan(3, &sizes(), as_of(), &mut taken);
        let names =
            |p: &Plan| -> BTreeSet<String> { p.users.iter().map(|u| u.username.clone()).collect() };
        assert!(names(&first).is_disjoint(&names(&second)));
        let slugs =
            |p: &Plan| -> BTreeSet<String> { p.teams.iter().map(|t| t.slug.clone()).collect() };
        assert!(slugs(&first).is_disjoint(&slugs(&second)));
        assert_eq!(names(&first).len(), first.users.len());
    }

    #[test]
    fn attachment_files_never_go_through_a_symlink() {
        let a = Attachment {
            stored: "abc.txt".into(),
            name: "notes.txt".into(),
            uploaded: as_of().and_time(NaiveTime::MIN).and_utc(),
            content: "hello\n".into(),
        };
        let outside = tempfile::tempdir().expect("tempdir");
        let victim = outside.path().join("victim.txt");

        // A symlink where the planned file would go is not followed: the next name is used.
        let root = tempfile::tempdir().expect("tempdir");
        let dir = std::fs::canonicalize(root.path())
            .expect("root")
            .join(SUBDIR);
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::symlink(&victim, dir.join("abc.txt")).expect("symlink");
        let mut written = Vec::new();
        let file = write_file(root.path(), &mut None, &a, &mut written).expect("written");
        assert_eq!(file, "allocations/abc-2.txt");
        assert!(!victim.exists(), "nothing written through the symlink");
        assert!(
            std::fs::symlink_metadata(dir.join("abc.txt"))
                .expect("kept")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("abc-2.txt")).expect("file"),
            "hello\n"
        );
        assert_eq!(written, [dir.join("abc-2.txt")]);

        // A symlinked attachments directory is refused: nothing is written through it.
        let root = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join(SUBDIR)).expect("symlink");
        let mut written = Vec::new();
        let e = write_file(root.path(), &mut None, &a, &mut written).expect_err("refused");
        assert!(matches!(e, SeedError::File { .. }), "{e}");
        assert!(written.is_empty());
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("outside").count(),
            0,
            "the outside directory stays empty"
        );
    }

    #[test]
    fn ranges_must_be_ordered() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            seed: SeedArgs,
        }
        let ok = Cli::try_parse_from(["seed", "--n-team-members", "1", "2"]).expect("parses");
        assert_eq!(
            ok.seed.sizes().expect("valid").team_members,
            Range { min: 1, max: 2 }
        );
        let bad = Cli::try_parse_from(["seed", "--n-req-comments", "4", "1"]).expect("parses");
        let e = bad.seed.sizes().expect_err("MIN > MAX");
        assert!(e.contains("--n-req-comments"), "{e}");
        assert!(Cli::try_parse_from(["seed", "--n-team-members", "1"]).is_err());
        assert!(Cli::try_parse_from(["seed", "--n-staff", "-1"]).is_err());
    }
}
