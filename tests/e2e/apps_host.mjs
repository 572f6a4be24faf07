// The host side of MCP Apps, for the test host page (tests/e2e/test_console.py): the AppBridge of
// @modelcontextprotocol/ext-apps (npm), bundled for the browser by esbuild when the test runs.
import { AppBridge, PostMessageTransport } from '@modelcontextprotocol/ext-apps/app-bridge';

window.McpAppsHost = { AppBridge, PostMessageTransport };
