"""A small builder for ComfyUI UI-format workflows (litegraph ``version 0.4``, docs/comfyui.md §6), used by
``build_workflows.py``.

Node definitions come from a real ComfyUI 0.3.64's ``/object_info`` (the copy in ``tests/data/``) and from this
pack's own classes, so every socket, widget and default is the one the server reports. ``Graph.add`` takes the
widget values by name (the rest keep their defaults) and the links by input name; ``Graph.to_json`` lays the
widget values out positionally as the frontend saves them, with the extra ``control_after_generate`` value after
seed widgets.
"""
import importlib.util
import json
import pathlib
import sys
import uuid

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
OBJECT_INFO = REPO / "tests" / "data" / "comfyui-0.3.64-object_info.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_NOTES = {"MarkdownNote", "Note"}
GAP = 40  # pixels between nodes and between columns
NOTE_COLOURS = {"color": "#432", "bgcolor": "#653"}


def load_pack():
    """This repository imported as a ComfyUI pack package (as ComfyUI imports ``custom_nodes/<folder>``)."""
    name = "trajir_workflow_pack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Definition:
    """Inputs (name -> spec, in the frontend's order) and outputs ``[(name, type)]`` of a node type."""

    def __init__(self, inputs, outputs, core):
        self.inputs, self.outputs, self.core = inputs, outputs, core

    def is_widget(self, name):
        kind = self.inputs[name][0]
        return isinstance(kind, list) or kind in WIDGET_TYPES

    def has_seed_control(self, name):
        """The frontend adds a ``control_after_generate`` widget after this INT widget: when its options ask for
        one, and (a legacy convention) for INT inputs named seed or noise_seed."""
        spec = self.inputs[name]
        options = spec[1] if len(spec) > 1 else {}
        return spec[0] == "INT" and (bool(options.get("control_after_generate")) or name in ("seed", "noise_seed"))

    def default(self, name):
        spec = self.inputs[name]
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if "default" in options:
            return options["default"]
        if isinstance(kind, list):
            return kind[0] if kind else None
        if kind == "COMBO":
            return options.get("options", [None])[0]
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


def definitions():
    """``{node type: Definition}`` for ComfyUI 0.3.64's core nodes and this pack's nodes."""
    out = {}
    for name, info in json.loads(OBJECT_INFO.read_text())["nodes"].items():
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        out[name] = Definition({k: specs[k] for k in order}, list(zip(info["output_name"], info["output"])), True)
    for name, cls in load_pack().NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        inputs = {k: [list(v[0]) if isinstance(v[0], (list, tuple)) else v[0], *v[1:]]
                  for k, v in {**declared.get("required", {}), **declared.get("optional", {})}.items()}
        out[name] = Definition(inputs, list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES)), False)
    return out


class Node:
    def __init__(self, graph, node_id, node_type, widgets, links, title, column, size, models, note):
        self.graph, self.id, self.type = graph, node_id, node_type
        self.widgets, self.links, self.title, self.column, self.size = widgets, links, title, column, size
        self.models, self.note = models, note
        self.pos = None

    def out(self, name_or_index=0):
        """An output of this node, to pass as a link source."""
        if isinstance(name_or_index, int):
            return self, name_or_index
        names = [n for n, _ in self.graph.defs[self.type].outputs]
        if name_or_index not in names:
            raise ValueError(f"{self.type} has no output {name_or_index!r}; outputs: {names}")
        return self, names.index(name_or_index)


class Graph:
    """One workflow under construction; ``add`` nodes column by column, then ``to_json``."""

    def __init__(self, name, defs):
        self.name, self.defs = name, defs
        self.nodes = []
        self.column_heights = {}

    def add(self, node_type, column, widgets=None, links=None, title=None, size=None, models=None):
        if node_type not in self.defs:
            raise ValueError(f"{self.name}: unknown node type {node_type!r}")
        definition = self.defs[node_type]
        widgets, links = dict(widgets or {}), dict(links or {})
        unknown = (set(widgets) | set(links)) - set(definition.inputs)
        if unknown:
            raise ValueError(f"{self.name}: {node_type} has no inputs {sorted(unknown)}")
        for name, value in links.items():
            if isinstance(value, Node):
                links[name] = value.out(0)
        node = Node(self, len(self.nodes) + 1, node_type, widgets, links, title, column,
                    size or self._size(definition, widgets), models, None)
        self._place(node)
        self.nodes.append(node)
        return node

    def note(self, column, text, title="Read me", size=(460, 420)):
        node = Node(self, len(self.nodes) + 1, "MarkdownNote", {}, {}, title, column, list(size), None, text)
        self._place(node)
        self.nodes.append(node)
        return node

    def _size(self, definition, widgets):
        sockets = sum(not definition.is_widget(n) for n in definition.inputs)
        rows = max(sockets, len(definition.outputs))
        n_widgets = sum(definition.is_widget(n) + definition.has_seed_control(n) for n in definition.inputs
                        if definition.is_widget(n))
        multiline = sum(1 for n in definition.inputs if definition.is_widget(n)
                        and (definition.inputs[n][1] if len(definition.inputs[n]) > 1 else {}).get("multiline"))
        return [320, 36 + 22 * rows + 26 * n_widgets + 70 * multiline]

    def _place(self, node):
        """Stack the node under the previous one of its column; the column's x is set by ``to_json``."""
        y = self.column_heights.get(node.column, 0)
        node.pos = [None, y]
        self.column_heights[node.column] = y + node.size[1] + GAP

    def _column_x(self):
        """Each column starts right of the widest node of the columns before it."""
        widths = {}
        for node in self.nodes:
            widths[node.column] = max(widths.get(node.column, 0), node.size[0])
        x, out = 0, {}
        for column in range(max(widths) + 1):
            out[column] = x
            x += widths.get(column, 0) + GAP
        return out

    def _widget_values(self, node):
        definition = self.defs[node.type]
        values = []
        for name in definition.inputs:
            if not definition.is_widget(name) or name in node.links:
                continue
            values.append(node.widgets.get(name, definition.default(name)))
            if definition.has_seed_control(name):
                values.append("fixed")
        return values

    def _order(self):
        """A topological order of the nodes (sources first), ties by id."""
        placed, order = set(), []
        while len(order) < len(self.nodes):
            for node in self.nodes:
                if node.id in placed:
                    continue
                if all(src.id in placed for src, _ in node.links.values()):
                    placed.add(node.id)
                    order.append(node.id)
                    break
            else:
                raise ValueError(f"{self.name}: the graph has a cycle")
        return {node_id: i for i, node_id in enumerate(order)}

    def to_json(self):
        links, link_id = [], 0
        inputs_of = {node.id: [] for node in self.nodes}
        outputs_of = {node.id: {} for node in self.nodes}
        for node in self.nodes:
            if node.type in FRONTEND_NOTES:
                continue
            definition = self.defs[node.type]
            for name, spec in definition.inputs.items():
                linked = name in node.links
                if definition.is_widget(name) and not linked:
                    continue
                entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": None}
                if linked:
                    src, slot = node.links[name]
                    link_id += 1
                    src_type = self.defs[src.type].outputs[slot][1]
                    links.append([link_id, src.id, slot, node.id, len(inputs_of[node.id]), src_type])
                    outputs_of[src.id].setdefault(slot, []).append(link_id)
                    entry["link"] = link_id
                    if definition.is_widget(name):
                        entry["widget"] = {"name": name}
                inputs_of[node.id].append(entry)
        order = self._order()
        column_x = self._column_x()
        nodes = []
        for node in self.nodes:
            item = {"id": node.id, "type": node.type, "pos": [column_x[node.column], node.pos[1]], "size": node.size,
                    "flags": {}, "order": order[node.id], "mode": 0, "inputs": inputs_of[node.id], "outputs": []}
            if node.type in FRONTEND_NOTES:
                item.update(properties={}, widgets_values=[node.note], **NOTE_COLOURS)
            else:
                definition = self.defs[node.type]
                item["outputs"] = [{"name": name, "type": kind, "links": outputs_of[node.id].get(i),
                                    "slot_index": i} for i, (name, kind) in enumerate(definition.outputs)]
                properties = {"Node name for S&R": node.type,
                              "cnr_id": "comfy-core" if definition.core else "trajir"}
                if definition.core:
                    properties["ver"] = "0.3.64"
                if node.models:
                    properties["models"] = node.models
                item["properties"] = properties
                item["widgets_values"] = self._widget_values(node)
            if node.title:
                item["title"] = node.title
            nodes.append(item)
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"trajir/workflows/{self.name}")), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}}, "version": 0.4}
