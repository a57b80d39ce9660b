//! A small typed description of a dashboard (rows of panels with their PromQL, unit and
//! description; the label filters its variables set) and its rendering into Grafana's JSON
//! model: ids, grid positions, datasource references and variable matchers are filled in
//! here, once, so every panel gets them the same way.

use std::collections::BTreeMap;

use super::grafana::{
    Annotation, Annotations, Dashboard, DashboardLink, DataLink, DataSourceRef, FieldColor,
    FieldConfig, FieldConfigSource, FieldCustom, GraphFieldConfig, GridPos, Legend, MappedValue,
    Matcher, OrganizeOptions, Override, Panel, PanelOptions, Property, ReduceOptions,
    SCHEMA_VERSION, SortBy, Stacking, StatOptions, Step, TableFieldOptions, TableFooter,
    TableOptions, Target, Templating, Thresholds, TimePicker, TimeRange, TimeSeriesOptions,
    Tooltip, Transformation, ValueMapping, Variable,
};

/// The dashboards' shared tag; each dashboard links to the others through it.
pub const TAG: &str = "bpfexec";

/// A label the dashboard filters on, with the template variable that sets it.
pub struct Filter {
    /// Prometheus label (`exported_job`, `alloc_id`, `instance`, ...).
    pub label: &'static str,
    /// Variable name (`$job`, ...).
    pub var: &'static str,
    /// Shown next to the picker.
    pub title: &'static str,
    pub description: &'static str,
}

/// The label filters of one dashboard, in picker order (each picker lists the values left by
/// the ones before it).
pub struct Scope {
    pub filters: Vec<Filter>,
    /// The series whose labels fill the pickers.
    pub source: &'static str,
}

impl Scope {
    /// `label=~"$var", ...` for every filter.
    pub fn matchers(&self) -> String {
        self.matchers_before(self.filters.len())
    }

    fn matchers_before(&self, n: usize) -> String {
        self.filters
            .iter()
            .take(n)
            .map(|f| format!("{}=~\"${}\"", f.label, f.var))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A selector of `metric` narrowed by every filter and by `extra` matchers (may be empty).
    pub fn sel(&self, metric: &str, extra: &str) -> String {
        let mut m = self.matchers();
        if !extra.is_empty() {
            m.push_str(", ");
            m.push_str(extra);
        }
        format!("{metric}{{{m}}}")
    }
}

/// How a panel draws its data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Viz {
    /// Lines over time (levels: gauges, rates).
    Lines,
    /// Stacked bars over time (event counts per interval).
    Bars,
    /// A table of the latest values (instant query, labels as columns).
    Table,
    /// One big number per series.
    Stat,
}

pub struct Query {
    pub expr: String,
    pub legend: String,
}

/// Query helper: `q(expr, legend)`.
pub fn q(expr: impl Into<String>, legend: &str) -> Query {
    Query {
        expr: expr.into(),
        legend: legend.to_owned(),
    }
}

/// A table column: the label (or `Value`) it shows, its header, and its place.
pub struct Column {
    pub field: &'static str,
    pub header: &'static str,
}

pub struct PanelSpec {
    pub viz: Viz,
    pub title: &'static str,
    pub description: String,
    pub unit: &'static str,
    pub width: u32,
    pub height: u32,
    pub queries: Vec<Query>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Value -> text for stat panels (`1` -> `loaded`).
    pub mappings: Vec<(&'static str, &'static str, &'static str)>,
    /// Tables: the columns shown, in order (everything else is hidden).
    pub columns: Vec<Column>,
    /// Tables: a link on a column (`field`, title, url).
    pub link: Option<(&'static str, &'static str, String)>,
    /// Tables: the column sorted on, descending.
    pub sort_desc: Option<&'static str>,
}

/// Starts a panel; the rest is filled with the builder methods.
pub fn panel(viz: Viz, title: &'static str, unit: &'static str, description: &str) -> PanelSpec {
    PanelSpec {
        viz,
        title,
        description: description.to_owned(),
        unit,
        width: 12,
        height: 8,
        queries: Vec::new(),
        min: None,
        max: None,
        mappings: Vec::new(),
        columns: Vec::new(),
        link: None,
        sort_desc: None,
    }
}

impl PanelSpec {
    pub fn query(mut self, query: Query) -> Self {
        self.queries.push(query);
        self
    }
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }
    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
    pub fn min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }
    pub fn mapping(mut self, value: &'static str, text: &'static str, color: &'static str) -> Self {
        self.mappings.push((value, text, color));
        self
    }
    pub fn columns(mut self, columns: &[(&'static str, &'static str)]) -> Self {
        self.columns = columns
            .iter()
            .map(|&(field, header)| Column { field, header })
            .collect();
        self
    }
    pub fn link(mut self, field: &'static str, title: &'static str, url: String) -> Self {
        self.link = Some((field, title, url));
        self
    }
    pub fn sort_desc(mut self, header: &'static str) -> Self {
        self.sort_desc = Some(header);
        self
    }
}

pub struct Row {
    pub title: &'static str,
    pub panels: Vec<PanelSpec>,
}

/// An extra datasource picker (the trace store next to Prometheus).
pub struct DatasourceVar {
    pub name: &'static str,
    pub label: &'static str,
    pub plugin: &'static str,
    pub description: &'static str,
}

/// A Prometheus annotation drawn on every time-series panel.
pub struct AnnotationSpec {
    pub name: &'static str,
    pub expr: String,
    pub title: &'static str,
    pub text: &'static str,
    pub tags: &'static str,
}

pub struct Board {
    pub uid: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub scope: Scope,
    pub datasources: Vec<DatasourceVar>,
    pub annotations: Vec<AnnotationSpec>,
    pub rows: Vec<Row>,
}

/// Grid width in Grafana's columns.
const GRID: u32 = 24;

impl Board {
    /// The dashboard in Grafana's JSON model.
    pub fn render(&self) -> Dashboard {
        let mut panels = Vec::new();
        let mut id = 0;
        let mut y = 0;
        for row in &self.rows {
            id += 1;
            panels.push(row_panel(id, row.title, y));
            y += 1;
            let (mut x, mut line_height) = (0, 0);
            for spec in &row.panels {
                if x + spec.width > GRID {
                    x = 0;
                    y += line_height;
                    line_height = 0;
                }
                id += 1;
                let pos = GridPos {
                    h: spec.height,
                    w: spec.width,
                    x,
                    y,
                };
                panels.push(render_panel(id, spec, pos));
                x += spec.width;
                line_height = line_height.max(spec.height);
            }
            y += line_height;
        }
        Dashboard {
            uid: self.uid.to_owned(),
            title: self.title.to_owned(),
            description: self.description.to_owned(),
            tags: vec![TAG.to_owned(), "nomad".to_owned()],
            timezone: "browser",
            editable: true,
            graph_tooltip: 1,
            fiscal_year_start_month: 0,
            live_now: false,
            time: TimeRange {
                from: "now-1h",
                to: "now",
            },
            timepicker: TimePicker {
                refresh_intervals: vec!["10s", "30s", "1m", "5m", "15m"],
            },
            refresh: "30s",
            schema_version: SCHEMA_VERSION,
            version: 1,
            links: vec![DashboardLink {
                title: "bpfexec dashboards",
                kind: "dashboards",
                icon: "external link",
                tooltip: "The other bpfexec dashboards",
                url: "",
                tags: vec![TAG],
                as_dropdown: true,
                target_blank: false,
                include_vars: false,
                keep_time: true,
            }],
            templating: Templating {
                list: self.variables(),
            },
            annotations: Annotations {
                list: self
                    .annotations
                    .iter()
                    .map(|a| Annotation {
                        name: a.name,
                        datasource: DataSourceRef::prometheus(),
                        enable: true,
                        hide: false,
                        icon_color: "red",
                        expr: a.expr.clone(),
                        step: "",
                        title_format: a.title,
                        text_format: a.text,
                        tag_keys: a.tags,
                        use_value_for_time: true,
                    })
                    .collect(),
            },
            panels,
        }
    }

    fn variables(&self) -> Vec<Variable> {
        let mut vars = vec![datasource_var(&DatasourceVar {
            name: "datasource",
            label: "Prometheus",
            plugin: "prometheus",
            description: "The Prometheus that scrapes the bpfexec driver and the Nomad agents",
        })];
        vars.extend(self.datasources.iter().map(datasource_var));
        for (i, f) in self.scope.filters.iter().enumerate() {
            let narrowed = self.scope.matchers_before(i);
            let series = if narrowed.is_empty() {
                self.scope.source.to_owned()
            } else {
                format!("{}{{{narrowed}}}", self.scope.source)
            };
            let query = format!("label_values({series}, {})", f.label);
            vars.push(Variable {
                kind: "query",
                name: f.var,
                label: f.title,
                description: f.description,
                hide: 0,
                query: query.clone(),
                definition: Some(query),
                datasource: Some(DataSourceRef::prometheus()),
                refresh: 2,
                regex: "",
                sort: 1,
                multi: true,
                include_all: true,
                all_value: Some(".*"),
                skip_url_sync: false,
            });
        }
        vars
    }
}

fn datasource_var(d: &DatasourceVar) -> Variable {
    Variable {
        kind: "datasource",
        name: d.name,
        label: d.label,
        description: d.description,
        hide: 0,
        query: d.plugin.to_owned(),
        definition: None,
        datasource: None,
        refresh: 1,
        regex: "",
        sort: 0,
        multi: false,
        include_all: false,
        all_value: None,
        skip_url_sync: false,
    }
}

fn row_panel(id: u32, title: &str, y: u32) -> Panel {
    Panel {
        kind: "row",
        id,
        title: title.to_owned(),
        description: None,
        grid_pos: GridPos {
            h: 1,
            w: GRID,
            x: 0,
            y,
        },
        collapsed: Some(false),
        panels: Some(Vec::new()),
        datasource: None,
        targets: Vec::new(),
        field_config: None,
        options: None,
        transformations: Vec::new(),
    }
}

fn render_panel(id: u32, spec: &PanelSpec, grid_pos: GridPos) -> Panel {
    Panel {
        kind: match spec.viz {
            Viz::Lines | Viz::Bars => "timeseries",
            Viz::Table => "table",
            Viz::Stat => "stat",
        },
        id,
        title: spec.title.to_owned(),
        description: Some(spec.description.clone()),
        grid_pos,
        collapsed: None,
        panels: None,
        datasource: Some(DataSourceRef::prometheus()),
        targets: targets(spec),
        field_config: Some(field_config(spec)),
        options: Some(options(spec)),
        transformations: if spec.viz == Viz::Table {
            vec![organize(spec)]
        } else {
            Vec::new()
        },
    }
}

/// Range queries for graphs; instant queries for tables (as a table) and stats.
fn targets(spec: &PanelSpec) -> Vec<Target> {
    let instant = matches!(spec.viz, Viz::Table | Viz::Stat);
    spec.queries
        .iter()
        .enumerate()
        .map(|(i, query)| Target {
            ref_id: ref_id(i),
            datasource: DataSourceRef::prometheus(),
            editor_mode: "code",
            expr: query.expr.clone(),
            legend_format: if query.legend.is_empty() {
                "__auto".to_owned()
            } else {
                query.legend.clone()
            },
            range: !instant,
            instant,
            format: if spec.viz == Viz::Table {
                "table"
            } else {
                "time_series"
            },
        })
        .collect()
}

fn field_config(spec: &PanelSpec) -> FieldConfigSource {
    let bars = spec.viz == Viz::Bars;
    let custom = match spec.viz {
        Viz::Lines | Viz::Bars => Some(FieldCustom::Graph(GraphFieldConfig {
            draw_style: if bars { "bars" } else { "line" },
            line_width: 1,
            fill_opacity: if bars { 80 } else { 10 },
            show_points: "never",
            span_nulls: false,
            axis_soft_min: 0,
            stacking: Stacking {
                mode: if bars { "normal" } else { "none" },
                group: "A",
            },
        })),
        Viz::Table => Some(FieldCustom::Table(TableFieldOptions {
            align: "auto",
            inspect: false,
        })),
        Viz::Stat => None,
    };
    let mappings = if spec.mappings.is_empty() {
        Vec::new()
    } else {
        let options = spec
            .mappings
            .iter()
            .enumerate()
            .map(|(i, &(value, text, color))| {
                (
                    value.to_owned(),
                    MappedValue {
                        text,
                        color,
                        index: i as u32,
                    },
                )
            })
            .collect();
        vec![ValueMapping {
            kind: "value",
            options,
        }]
    };
    let overrides = spec
        .link
        .iter()
        .map(|(field, title, url)| Override {
            matcher: Matcher {
                id: "byName",
                options: header_of(spec, field).to_owned(),
            },
            properties: vec![Property {
                id: "links",
                value: vec![DataLink {
                    title,
                    url: url.clone(),
                    target_blank: true,
                }],
            }],
        })
        .collect();
    FieldConfigSource {
        defaults: FieldConfig {
            unit: spec.unit,
            decimals: None,
            min: spec.min,
            max: spec.max,
            color: FieldColor {
                mode: if spec.viz == Viz::Stat {
                    "thresholds"
                } else {
                    "palette-classic"
                },
            },
            thresholds: Thresholds {
                mode: "absolute",
                steps: vec![Step {
                    color: "green",
                    value: None,
                }],
            },
            mappings,
            custom,
        },
        overrides,
    }
}

fn options(spec: &PanelSpec) -> PanelOptions {
    match spec.viz {
        Viz::Lines | Viz::Bars => PanelOptions::TimeSeries(TimeSeriesOptions {
            legend: Legend {
                display_mode: "list",
                placement: "bottom",
                show_legend: true,
                calcs: Vec::new(),
            },
            tooltip: Tooltip {
                mode: "multi",
                sort: "desc",
            },
        }),
        Viz::Table => PanelOptions::Table(TableOptions {
            frame_index: 0,
            show_header: true,
            cell_height: "sm",
            sort_by: spec
                .sort_desc
                .map(|display_name| SortBy {
                    display_name,
                    desc: true,
                })
                .into_iter()
                .collect(),
            footer: TableFooter {
                show: false,
                reducer: vec!["sum"],
                count_rows: false,
            },
        }),
        Viz::Stat => PanelOptions::Stat(StatOptions {
            graph_mode: "none",
            color_mode: "background",
            justify_mode: "auto",
            text_mode: "value_and_name",
            wide_layout: true,
            show_percent_change: false,
            percent_change_color_mode: "standard",
            orientation: "auto",
            reduce_options: ReduceOptions {
                values: false,
                calcs: vec!["lastNotNull"],
                fields: "",
            },
        }),
    }
}

/// The header a table column gets (links and sorting name columns by their header).
fn header_of<'a>(spec: &'a PanelSpec, field: &'a str) -> &'a str {
    spec.columns
        .iter()
        .find(|c| c.field == field)
        .map_or(field, |c| c.header)
}

/// Keeps the listed columns, in order, under their headers; hides every other column.
fn organize(spec: &PanelSpec) -> Transformation {
    let mut exclude_by_name = BTreeMap::new();
    for hidden in ["Time", "__name__", "instance", "job", "Value"] {
        if !spec.columns.iter().any(|c| c.field == hidden) {
            exclude_by_name.insert(hidden, true);
        }
    }
    Transformation {
        id: "organize",
        options: OrganizeOptions {
            exclude_by_name,
            index_by_name: spec
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.field, i as u32))
                .collect(),
            rename_by_name: spec.columns.iter().map(|c| (c.field, c.header)).collect(),
        },
    }
}

/// `A`, `B`, ... as Grafana names a panel's queries.
fn ref_id(i: usize) -> String {
    char::from(b'A' + (i % 26) as u8).to_string()
}
