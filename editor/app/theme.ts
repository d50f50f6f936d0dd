// litegraph's look: a dark theme close to the usual node editors, with a little more contrast.
import { LiteGraph } from '@comfyorg/litegraph';

export function applyTheme(): void {
  Object.assign(LiteGraph, {
    NODE_TITLE_COLOR: '#d8d8d8',
    NODE_SELECTED_TITLE_COLOR: '#ffffff',
    NODE_TEXT_COLOR: '#c8c8c8',
    NODE_DEFAULT_COLOR: '#3a3a3a',
    NODE_DEFAULT_BGCOLOR: '#2a2a2a',
    NODE_DEFAULT_BOXCOLOR: '#777',
    NODE_WIDGET_HEIGHT: 22,
    NODE_FONT: 'Inter, "Segoe UI", system-ui, sans-serif',
    WIDGET_BGCOLOR: '#1c1c1c',
    WIDGET_OUTLINE_COLOR: '#555',
    WIDGET_TEXT_COLOR: '#e6e6e6',
    WIDGET_SECONDARY_TEXT_COLOR: '#9a9a9a',
    LINK_COLOR: '#9a9',
    NODE_ERROR_COLOUR: '#ff4d4d',
    // Dialogs stay open while the pointer wanders (tests and people both move the mouse).
    dialog_close_on_mouse_leave: false,
    snaps_for_comfy: true,
  });
}
