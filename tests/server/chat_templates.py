"""Small chat templates with the markers of each model family, for the scripted API tests.

Each keeps what the server's behaviour depends on: whether it reads `tools`, how it writes past
calls and tool results, and its family's markers (what `template_score` looks for).
"""

QWEN = """{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each function call, return <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
<|im_start|>{{ message.role }}
{% if message.content %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}
<tool_call>
{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}
</tool_call>
{%- endfor %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

LLAMA3 = """<|begin_of_text|>{%- if tools %}<|start_header_id|>system<|end_header_id|>

Respond with a JSON function call {"name": function name, "parameters": dictionary of arguments}.
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|eot_id|>{% endif %}
{%- for message in messages %}<|start_header_id|>{{ 'ipython' if message.role == 'tool' else message.role }}<|end_header_id|>

{% if message.tool_calls %}{% for call in message.tool_calls %}{{ {"name": call.function.name, "parameters": call.function.arguments} | tojson }}{% endfor %}{% else %}{{ message.content }}{% endif %}<|eot_id|>
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

MISTRAL = """<s>{%- if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}[INST] {{ message.content }}[/INST]
{%- elif message.tool_calls %}[TOOL_CALLS] {{ message.tool_calls | map(attribute='function') | list | tojson }}</s>
{%- elif message.role == 'tool' %}[TOOL_RESULTS] {{ message.content }}[/TOOL_RESULTS]
{%- else %}{{ message.content }}</s>{% endif %}
{%- endfor %}"""

# SmolLM2's template: ChatML that ignores tools.
CHATML_NO_TOOLS = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"""

QWEN3 = QWEN.replace("{% if message.content %}{{ message.content }}{% endif %}",
                     "{% if message.content %}{{ message.content.split('</think>')[-1] }}{% endif %}")

# DeepSeek-R1 style: the generation prompt opens the reasoning itself.
R1 = """{%- for message in messages %}{{ '<｜' + message.role + '｜>' + message.content.split('</think>')[-1] }}
{%- endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>
{% endif %}"""
