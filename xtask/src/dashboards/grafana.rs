//! Grafana's dashboard JSON model (schemaVersion 39, as read by Grafana 10.4 and later): the
//! subset our dashboards use, typed so a misspelt field cannot reach a committed file. Field
//! names follow the dashboard schema (`Dashboard`, `Panel`, `VariableModel`, `FieldConfigSource`)
//! and the panel plugins' option schemas (timeseries, table, stat, Prometheus `Dataquery`).

use std::collections::BTreeMap;

use serde::Serialize;

/// The schema version Grafana migrates from; every field below exists in it.
pub const SCHEMA_VERSION: u16 = 39;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub timezone: &'static str,
    pub editable: bool,
    /// 1 = shared crosshair.
    pub graph_tooltip: u8,
    pub fiscal_year_start_month: u8,
    pub live_now: bool,
    pub time: TimeRange,
    pub timepicker: TimePicker,
    pub refresh: &'static str,
    pub schema_version: u16,
    pub version: u32,
    pub links: Vec<DashboardLink>,
    pub templating: Templating,
    pub annotations: Annotations,
    pub panels: Vec<Panel>,
}

#[derive(Serialize)]
pub struct TimeRange {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Serialize)]
pub struct TimePicker {
    pub refresh_intervals: Vec<&'static str>,
}

/// A link in the dashboard's header: here, to the other bpfexec dashboards (by tag).
#[allow(clippy::struct_excessive_bools)] // Reason: the flags of Grafana's `DashboardLink`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardLink {
    pub title: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub icon: &'static str,
    pub tooltip: &'static str,
    pub url: &'static str,
    pub tags: Vec<&'static str>,
    pub as_dropdown: bool,
    pub target_blank: bool,
    pub include_vars: bool,
    pub keep_time: bool,
}

#[derive(Serialize)]
pub struct Templating {
    pub list: Vec<Variable>,
}

/// A template variable (`VariableModel`): a datasource picker or a Prometheus label query.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Variable {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: &'static str,
    pub label: &'static str,
    pub description: &'static str,
    /// 0 = show label and value.
    pub hide: u8,
    /// Datasource variables: the plugin type id; query variables: the label query.
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datasource: Option<DataSourceRef>,
    /// 1 = on dashboard load (datasources), 2 = on time range change (label queries).
    pub refresh: u8,
    pub regex: &'static str,
    /// 1 = alphabetical ascending.
    pub sort: u8,
    pub multi: bool,
    pub include_all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_value: Option<&'static str>,
    pub skip_url_sync: bool,
}

#[derive(Serialize)]
pub struct Annotations {
    pub list: Vec<Annotation>,
}

/// A Prometheus annotation query (`AnnotationQuery` with the Prometheus fields).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Annotation {
    pub name: &'static str,
    pub datasource: DataSourceRef,
    pub enable: bool,
    pub hide: bool,
    pub icon_color: &'static str,
    pub expr: String,
    pub step: &'static str,
    pub title_format: &'static str,
    pub text_format: &'static str,
    pub tag_keys: &'static str,
    pub use_value_for_time: bool,
}

#[derive(Serialize, Clone)]
pub struct DataSourceRef {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub uid: &'static str,
}

impl DataSourceRef {
    /// The Prometheus datasource chosen by the `$datasource` variable.
    pub fn prometheus() -> Self {
        Self {
            kind: "prometheus",
            uid: "${datasource}",
        }
    }
}

/// A panel or a row (rows carry `collapsed` and an empty `panels`; the grid places the
/// panels that follow a row inside it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Panel {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: u32,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub grid_pos: GridPos,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapsed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panels: Option<Vec<Panel>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datasource: Option<DataSourceRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_config: Option<FieldConfigSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<PanelOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transformations: Vec<Transformation>,
}

#[derive(Serialize, Clone, Copy)]
pub struct GridPos {
    pub h: u32,
    pub w: u32,
    pub x: u32,
    pub y: u32,
}

/// A Prometheus query of a panel (the Prometheus `Dataquery`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub ref_id: String,
    pub datasource: DataSourceRef,
    pub editor_mode: &'static str,
    pub expr: String,
    pub legend_format: String,
    pub range: bool,
    pub instant: bool,
    /// `time_series` or `table`.
    pub format: &'static str,
}

#[derive(Serialize)]
pub struct FieldConfigSource {
    pub defaults: FieldConfig,
    pub overrides: Vec<Override>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldConfig {
    pub unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    pub color: FieldColor,
    pub thresholds: Thresholds,
    pub mappings: Vec<ValueMapping>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom: Option<FieldCustom>,
}

#[derive(Serialize)]
pub struct FieldColor {
    pub mode: &'static str,
}

#[derive(Serialize)]
pub struct Thresholds {
    pub mode: &'static str,
    pub steps: Vec<Step>,
}

/// A threshold step; the first one's value is null (minus infinity).
#[derive(Serialize)]
pub struct Step {
    pub color: &'static str,
    pub value: Option<f64>,
}

/// A value-to-text mapping (`ValueMap`).
#[derive(Serialize)]
pub struct ValueMapping {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub options: BTreeMap<String, MappedValue>,
}

#[derive(Serialize)]
pub struct MappedValue {
    pub text: &'static str,
    pub color: &'static str,
    pub index: u32,
}

/// Panel-plugin field options (`fieldConfig.defaults.custom`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum FieldCustom {
    Graph(GraphFieldConfig),
    Table(TableFieldOptions),
}

/// The timeseries panel's `GraphFieldConfig`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphFieldConfig {
    /// `line` or `bars`.
    pub draw_style: &'static str,
    pub line_width: u8,
    pub fill_opacity: u8,
    pub show_points: &'static str,
    pub span_nulls: bool,
    pub axis_soft_min: u8,
    pub stacking: Stacking,
}

#[derive(Serialize)]
pub struct Stacking {
    pub mode: &'static str,
    pub group: &'static str,
}

#[derive(Serialize)]
pub struct TableFieldOptions {
    pub align: &'static str,
    pub inspect: bool,
}

/// A field override: properties for the fields a matcher selects.
#[derive(Serialize)]
pub struct Override {
    pub matcher: Matcher,
    pub properties: Vec<Property>,
}

#[derive(Serialize)]
pub struct Matcher {
    pub id: &'static str,
    pub options: String,
}

/// An override property; ours set a column's data links.
#[derive(Serialize)]
pub struct Property {
    pub id: &'static str,
    pub value: Vec<DataLink>,
}

/// A data link on a field (opens a URL built from the clicked value).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataLink {
    pub title: &'static str,
    pub url: String,
    pub target_blank: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum PanelOptions {
    TimeSeries(TimeSeriesOptions),
    Table(TableOptions),
    Stat(StatOptions),
}

#[derive(Serialize)]
pub struct TimeSeriesOptions {
    pub legend: Legend,
    pub tooltip: Tooltip,
}

#[allow(clippy::struct_field_names)] // Reason: Grafana's field names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Legend {
    pub display_mode: &'static str,
    pub placement: &'static str,
    pub show_legend: bool,
    pub calcs: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct Tooltip {
    pub mode: &'static str,
    pub sort: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableOptions {
    pub frame_index: u32,
    pub show_header: bool,
    pub cell_height: &'static str,
    pub sort_by: Vec<SortBy>,
    pub footer: TableFooter,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SortBy {
    pub display_name: &'static str,
    pub desc: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableFooter {
    pub show: bool,
    pub reducer: Vec<&'static str>,
    pub count_rows: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatOptions {
    pub graph_mode: &'static str,
    pub color_mode: &'static str,
    pub justify_mode: &'static str,
    pub text_mode: &'static str,
    pub wide_layout: bool,
    pub show_percent_change: bool,
    pub percent_change_color_mode: &'static str,
    pub orientation: &'static str,
    pub reduce_options: ReduceOptions,
}

#[derive(Serialize)]
pub struct ReduceOptions {
    pub values: bool,
    pub calcs: Vec<&'static str>,
    pub fields: &'static str,
}

/// A transformation applied to a panel's frames; ours is `organize` (hide, order and rename
/// the columns of a table).
#[derive(Serialize)]
pub struct Transformation {
    pub id: &'static str,
    pub options: OrganizeOptions,
}

#[allow(clippy::struct_field_names)] // Reason: Grafana's field names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizeOptions {
    pub exclude_by_name: BTreeMap<&'static str, bool>,
    pub index_by_name: BTreeMap<&'static str, u32>,
    pub rename_by_name: BTreeMap<&'static str, &'static str>,
}
