#!/usr/bin/env python
"""Upload one ``hub_configs/<model>.<tag>/`` folder to the Hugging Face Hub.

    python scripts/push_to_hub.py hub_configs/flexnet16.cifar10 --repo-id flexconv-zoo/flexnet16.cifar10
    python scripts/push_to_hub.py hub_configs/flexnet16.cifar10 --repo-id me/flexnet16.cifar10 --dry-run

The folder is validated first (complete, loads strictly with timm, reproduces its reference logits, model
card metadata present, sha256 recorded, named after its architecture:
:func:`flexconv_zoo.hub_export.push_hub_folder`); nothing is uploaded otherwise. The token comes from the environment
(``HF_TOKEN``) or the huggingface_hub login cache.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', type=Path, help='hub_configs/<model>.<tag> folder')
    parser.add_argument('--repo-id', required=True, help='<org>/<model>.<tag> on the Hub')
    parser.add_argument('--revision', default=None, help='branch to push to (default: main)')
    parser.add_argument('--private', action='store_true', help='create the repo as private')
    parser.add_argument('--create-pr', action='store_true', help='open a pull request instead of pushing')
    parser.add_argument('--commit-message', default=None)
    parser.add_argument('--dry-run', action='store_true', help='validate and print what would be uploaded')
    parser.add_argument('--skip-validation', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from flexconv_zoo.cli import UserError
    from flexconv_zoo.hub_export import UploadError, push_hub_folder
    from flexconv_zoo.hub_folder import HubFolderError
    try:
        push_hub_folder(args.folder, args.repo_id, revision=args.revision, private=args.private,
                        create_pr=args.create_pr, commit_message=args.commit_message, dry_run=args.dry_run,
                        validate=not args.skip_validation)
    except UserError as err:  # the arguments or the environment: exit code 2
        print(f'error: {err}', file=sys.stderr)
        return 2
    except (HubFolderError, UploadError) as err:  # the folder or the Hub: exit code 1
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
