// A 2026-07-28-only MCP server on the TypeScript SDK v2 (@modelcontextprotocol/server +
// @modelcontextprotocol/node): `createMcpHandler(..., { legacy: 'reject' })`, the SDK's own
// "modern-only strict" mode, so 2025 traffic (initialize) is refused and a gateway has to
// bridge for 2025 clients. Sampling and elicitation are multi-round-trip `inputRequired`
// results; cancellation is the client closing the response stream (the handler's signal).
//
// Same surface as server_v1.mjs (see surface.py). Events the tests wait on are printed as
// `PEER {json}` lines on stdout, the first `PEER {"event":"ready","port":N}`.
import { createServer } from 'node:http';

import { toNodeHandler } from '@modelcontextprotocol/node';
import {
    acceptedContent,
    completable,
    createMcpHandler,
    inputRequired,
    LOG_LEVEL_META_KEY,
    McpServer,
    ResourceTemplate
} from '@modelcontextprotocol/server';
import * as z from 'zod/v4';

const NAMES = ['alice', 'albert', 'bob'];
const ITEM_IDS = ['1', '2', '42'];
const BINARY = Buffer.from([0, 1, 2, 253, 254, 255]).toString('base64');
const LEVELS = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];
const CHATTER = ['debug', 'info', 'warning', 'error'];

function event(fields) {
    process.stdout.write(`PEER ${JSON.stringify(fields)}\n`);
}

let watched = 0; // state of peer://watched
const text = value => ({ content: [{ type: 'text', text: value }] });
const sleep = (ms, signal) =>
    new Promise(resolve => {
        const timer = setTimeout(resolve, ms);
        signal?.addEventListener('abort', () => {
            clearTimeout(timer);
            resolve();
        });
    });

function buildServer(notifyUpdated) {
    const mcp = new McpServer(
        { name: 'peer-v2', version: '2.0.0' },
        { capabilities: { logging: {}, resources: { subscribe: true, listChanged: true }, completions: {} } }
    );

    mcp.registerTool('echo', { description: 'Echo the text', inputSchema: z.object({ text: z.string() }) }, async ({ text: t }) =>
        text(`echo: ${t}`)
    );

    mcp.registerTool(
        'count',
        { description: 'Count to n, one progress notification per step', inputSchema: z.object({ n: z.number().int().min(1).max(20) }) },
        async ({ n }, ctx) => {
            const token = ctx.mcpReq._meta?.progressToken;
            for (let i = 1; i <= n; i++) {
                if (token !== undefined) {
                    await ctx.mcpReq.notify({
                        method: 'notifications/progress',
                        params: { progressToken: token, progress: i, total: n, message: `step ${i}/${n}` }
                    });
                }
                await sleep(10);
            }
            return text(`counted ${n}`);
        }
    );

    mcp.registerTool('chatter', { description: 'Log one message at each of debug, info, warning, error' }, async ctx => {
        // 2026: a request opts in to log notifications with _meta logLevel, and gets only
        // those at or above it (SEP-2575); without it, none.
        const wanted = ctx.mcpReq.envelope?.[LOG_LEVEL_META_KEY] ?? ctx.mcpReq.envelope?.logLevel;
        for (const level of CHATTER) {
            if (wanted !== undefined && LEVELS.indexOf(level) >= LEVELS.indexOf(wanted)) {
                await ctx.mcpReq.notify({ method: 'notifications/message', params: { level, logger: 'peer', data: `chatter ${level}` } });
            }
        }
        return text('chattered');
    });

    mcp.registerTool(
        'ask_sampling',
        { description: 'Ask the client LLM a question (sampling/createMessage)', inputSchema: z.object({ question: z.string() }) },
        async ({ question }, ctx) => {
            const answer = ctx.mcpReq.inputResponses?.['llm'];
            if (!answer) {
                return inputRequired({
                    inputRequests: {
                        llm: inputRequired.createMessage({
                            messages: [{ role: 'user', content: { type: 'text', text: question } }],
                            maxTokens: 50
                        })
                    }
                });
            }
            const content = Array.isArray(answer.content) ? answer.content[0] : answer.content;
            return text(`sampled: ${content?.type === 'text' ? content.text : '?'} (model ${answer.model})`);
        }
    );

    mcp.registerTool('ask_elicitation', { description: 'Ask the user for a name (elicitation/create)' }, async ctx => {
        const answer = ctx.mcpReq.inputResponses?.['who'];
        if (!answer) {
            return inputRequired({
                inputRequests: {
                    who: inputRequired.elicit({
                        message: 'What is your name?',
                        requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] }
                    })
                }
            });
        }
        const form = acceptedContent(ctx.mcpReq.inputResponses, 'who');
        return text(`elicited: ${answer.action} ${form?.name ?? ''}`.trim());
    });

    mcp.registerTool('ask_roots', { description: 'Ask the client for its roots (roots/list)' }, async ctx => {
        const answer = ctx.mcpReq.inputResponses?.['roots'];
        if (!answer) return inputRequired({ inputRequests: { roots: inputRequired.listRoots() } });
        return text(`roots: ${(answer.roots ?? []).map(r => r.uri).join(' ')}`);
    });

    // Listed to every client: a 2026 server sees the capabilities per request, and this one
    // does not gate (server_v1.mjs does, per session).
    mcp.registerTool('gated', { description: 'Only for clients that declared sampling' }, async () =>
        text('gated: for clients with sampling')
    );

    mcp.registerTool(
        'slow',
        { description: 'Run until cancelled (at most `seconds`)', inputSchema: z.object({ tag: z.string(), seconds: z.number().max(60) }) },
        async ({ tag, seconds }, ctx) => {
            event({ event: 'started', tag });
            ctx.mcpReq.signal.addEventListener('abort', () => event({ event: 'cancelled', tag }));
            await sleep(seconds * 1000, ctx.mcpReq.signal);
            if (!ctx.mcpReq.signal.aborted) event({ event: 'finished', tag });
            return text(ctx.mcpReq.signal.aborted ? `cancelled ${tag}` : `finished ${tag}`);
        }
    );

    mcp.registerTool('touch', { description: 'Change peer://watched and notify its listeners' }, async () => {
        watched += 1;
        notifyUpdated('peer://watched');
        return text(`watched ${watched}`);
    });

    mcp.registerResource('static-text', 'peer://static/text', { mimeType: 'text/plain', description: 'Fixed text' }, async uri => ({
        contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'static text from peer-v2' }]
    }));
    mcp.registerResource(
        'static-binary',
        'peer://static/binary',
        { mimeType: 'application/octet-stream', description: 'Six fixed bytes' },
        async uri => ({ contents: [{ uri: uri.href, mimeType: 'application/octet-stream', blob: BINARY }] })
    );
    mcp.registerResource('watched', 'peer://watched', { mimeType: 'text/plain', description: 'Changed by the touch tool' }, async uri => ({
        contents: [{ uri: uri.href, mimeType: 'text/plain', text: `watched ${watched}` }]
    }));
    mcp.registerResource(
        'item',
        new ResourceTemplate('peer://items/{id}', {
            list: undefined,
            complete: { id: value => ITEM_IDS.filter(id => id.startsWith(value)) }
        }),
        { mimeType: 'text/plain', description: 'One item by id' },
        async (uri, { id }) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: `item ${id}` }] })
    );

    mcp.registerPrompt(
        'greet',
        {
            description: 'Greet someone',
            argsSchema: z.object({
                name: completable(z.string(), value => NAMES.filter(n => n.startsWith(value))),
                style: z.string().optional()
            })
        },
        async ({ name, style }) => ({
            messages: [{ role: 'user', content: { type: 'text', text: `Greet ${name} in a ${style ?? 'plain'} style.` } }]
        })
    );
    return mcp;
}

const handler = createMcpHandler(() => buildServer(uri => handler.notify.resourceUpdated(uri)), {
    legacy: 'reject',
    onerror: error => event({ event: 'refused', message: String(error?.message ?? error) })
});
const node = toNodeHandler(handler);

const http = createServer((req, res) => {
    if (new URL(req.url, 'http://x').pathname !== '/mcp') {
        res.writeHead(404).end();
        return;
    }
    void Promise.resolve(node(req, res)).catch(error => {
        event({ event: 'error', message: String(error?.stack ?? error) });
        if (!res.headersSent) res.writeHead(500).end();
    });
});
http.listen(0, '127.0.0.1', () => event({ event: 'ready', port: http.address().port, sdk: 'v2' }));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
