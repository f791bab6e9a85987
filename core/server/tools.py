"""A request's tools and tool choice, checked once for every API (OpenAI and Anthropic map onto it).

`ToolRequest.choice` is `auto` (the model may call; its text is parsed in its family's format),
`required` (at least one call of any tool) or `function` (a call of `name`); the last two are
constrained by the parser's JSON schema of a call, so they always parse. `none` and a request
without tools give no ToolRequest. Every problem is an APIError 400 naming the parameter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jackfield.sdk.call_schema import local_refs, resolve
from jackfield.sdk.tool_parser import Tool, ToolCallParser
from jackfield.server.errors import APIError
from jackfield.server.protocol import ChatCompletionRequest, NamedToolChoice

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[Tool, ...]
    choice: str                 # "auto" | "required" | "function"
    name: str | None = None     # the function of choice "function"
    parallel: bool = True

    @property
    def constrained(self) -> bool:
        return self.choice != "auto"

    @property
    def array(self) -> bool:
        """The constrained output is an array of calls (`required` with `parallel`)."""
        return self.parallel and self.choice == "required"

    def schema(self, parser: ToolCallParser) -> dict:
        """The JSON schema the constrained generation follows: one call of `name`, or with `required`
        an array of calls (`parallel`) or a single call of any tool."""
        try:
            return parser.constraint_schema(self.name, self.array)
        except ValueError as exc:
            raise APIError(400, f"cannot build the schema of a call: {exc}", param="tools") from None


def check_tool(name: Any, parameters: Any, description: str | None, param: str,
               schema_key: str = "parameters") -> Tool:
    """One tool: a name of 1-64 letters, digits, `_` or `-`, and a JSON schema of an object."""
    import jsonschema

    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise APIError(400, f"{param}.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                       param=f"{param}.name")
    where = f"{param}.{schema_key}"
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise APIError(400, f"{where} of '{name}' must be a JSON schema object, got {type(parameters).__name__}",
                       param=where)
    if parameters.get("type", "object") != "object":
        raise APIError(400, f"{where} of '{name}' must describe an object (\"type\": \"object\"), "
                            f"got type {parameters.get('type')!r}", param=where)
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.path)
        raise APIError(400, f"{where} of '{name}' is not a valid JSON schema: {exc.message}"
                            + (f" (at {at})" if at else ""), param=where) from None
    for ref in local_refs(parameters):
        try:
            resolve(parameters, ref)
        except LookupError as exc:
            raise APIError(400, f"{where} of '{name}' has a $ref that cannot be followed: {exc}", param=where) from None
    return Tool(name, description or "", parameters)


def tool_request(tools: list[Tool] | None, choice: str | None, name: str | None, parallel: bool,
                 choice_param: str = "tool_choice") -> ToolRequest | None:
    """Combine checked tools with the choice (`auto`, `required`, `none`, `function` + name)."""
    if not tools:
        if choice is not None:
            raise APIError(400, f"{choice_param} is set but no tools are given", param=choice_param)
        return None
    names = [t.name for t in tools]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise APIError(400, f"tools define the function '{dup}' twice", param="tools")
    choice = choice or "auto"
    if choice == "none":
        return None
    if choice == "function" and name not in names:
        raise APIError(400, f"{choice_param} names the function {name!r}, which is not among the tools "
                            f"({', '.join(names)})", param=choice_param)
    return ToolRequest(tuple(tools), choice, name if choice == "function" else None, parallel)


def openai_tools(body: ChatCompletionRequest) -> ToolRequest | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` of an OpenAI chat request."""
    tools = []
    for i, t in enumerate(body.tools or ()):
        if t.type != "function":
            raise APIError(400, f"tools[{i}].type must be 'function', got {t.type!r}", param=f"tools[{i}].type")
        f = t.function
        tools.append(check_tool(f.name, f.parameters, f.description, f"tools[{i}].function"))
    choice, name = body.tool_choice, None
    if isinstance(choice, NamedToolChoice):
        choice, name = "function", choice.function.name
    strict = next((t.function.name for t in body.tools or () if t.function.strict), None)
    if strict and (choice or "auto") == "auto":
        raise APIError(400, f"function '{strict}' has strict: true, which is enforced only with tool_choice "
                            "'required' or a named function (their calls are constrained by the schema)",
                       param="tool_choice")
    return tool_request(tools, choice, name, body.parallel_tool_calls)
