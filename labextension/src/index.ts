import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import qwenSvg from '../style/icons/qwen.svg';
import { QwenPanel } from './panel';
import { QwenStatusItem } from './statusbar';

const PLUGIN_ID = 'jupyter-qwen:plugin';
const STATUS_ID = 'jupyter-qwen:status';

export const qwenIcon = new LabIcon({ name: 'jupyter-qwen:icon', svgstr: qwenSvg });

namespace CommandIDs {
  export const open = 'jupyter-qwen:open-panel';
  export const stopAll = 'jupyter-qwen:stop-all';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'GPU memory per notebook and the running Qwen model servers, in the left sidebar.',
  autoStart: true,
  optional: [ISettingRegistry, ICommandPalette, ILayoutRestorer, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    settings: ISettingRegistry | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null
  ) => {
    const panel = new QwenPanel(path => void app.commands.execute('docmanager:open', { path }));
    panel.id = 'jupyter-qwen-panel';
    panel.title.icon = qwenIcon;
    panel.title.caption = 'Qwen: GPUs and model servers';
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, 'jupyter-qwen-panel');

    if (statusBar) {
      const item = new QwenStatusItem(() => app.shell.activateById(panel.id));
      panel.onRefresh(() => item.setServers(panel.servers));
      statusBar.registerStatusItem(STATUS_ID, { item, align: 'left', rank: 5 });
    }

    if (settings) {
      const apply = (s: ISettingRegistry.ISettings) => {
        panel.interval = s.get('refreshInterval').composite as number;
      };
      settings
        .load(PLUGIN_ID)
        .then(s => {
          apply(s);
          s.changed.connect(apply);
        })
        .catch(reason => console.error('jupyter-qwen: cannot load settings', reason));
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Qwen: Open GPU panel',
      icon: qwenIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.stopAll, {
      label: 'Qwen: Stop all servers',
      execute: async () => {
        await panel.refresh().catch(() => undefined);
        const n = panel.servers.filter(s => s.origin !== 'remote').length;
        if (n === 0) {
          Notification.info('No Qwen server of this Jupyter server is running.', { autoClose: 3000 });
          return;
        }
        const answer = await showDialog({
          title: 'Stop all Qwen servers?',
          body: `${n} model server${n > 1 ? 's' : ''} will stop and release GPU memory.`,
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop all' })]
        });
        if (answer.button.accept) {
          await panel.stopAll();
        }
      }
    });
    for (const command of [CommandIDs.open, CommandIDs.stopAll]) {
      palette?.addItem({ command, category: 'Qwen' });
    }
  }
};

export default plugin;
